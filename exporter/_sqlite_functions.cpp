// The SQL functions SQLite calls for every float, BLOB, CSV or TSV text field and date or
// time while it renders rows (exporter/render.py names them), in C++ so that rendering
// never takes Python's GIL: with them in Python, two readers of one export waited on each
// other for it, and a table with floats or bytes was read by one (exporter/sqlite_functions.py
// installs these; where this file did not build, render.py writes SQL that does without
// them).
//
//   exporter_float_repr(REAL)  Python's repr() of the double, to the byte
//   exporter_base64(BLOB)      base64 of the bytes, as Python's base64.b64encode; any
//                              other value as it is
//   exporter_csv_field(TEXT)   the text as a CSV field, quoted where it must be
//   exporter_tsv_field(TEXT)   the text as a TSV field, escaped as PostgreSQL's COPY does
//   exporter_csv_texts(...)    a row's values as CSV fields, each after a comma, that
//                              tell '' from NULL (Parquet's rows, read by Arrow)
//   exporter_timestamp(TEXT)   strftime('%Y-%m-%dT%H:%M:%SZ', x), date(x), time(x), for
//   exporter_date(TEXT)        the plain forms; NULL for the others, which SQLite's own
//   exporter_time(TEXT)        functions then read
//
// Built by setuptools as the Python module exporter._sqlite_functions (optional: without
// a C++17 compiler the package installs without it). The module itself holds nothing for
// Python; exporter_sqlite_init is what SQLite calls, once for each connection it opens.

#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <sqlite3ext.h>
SQLITE_EXTENSION_INIT1

#include <charconv>
#include <cmath>
#include <cstdlib>
#include <cstring>

namespace {

// repr()'s text of a finite double. std::to_chars gives the shortest digits that read
// back to the same double, the closest to it among them (as repr's), in scientific
// notation; they are laid out as repr lays them: positional when the decimal exponent
// is from -4 up to 15 (with ".0" when whole), else d.ddde+XX, with two exponent digits
// at least.
int repr_double(double x, char *out) {
    if (!std::isfinite(x)) {  // SQLite holds no NaN, but infinities: repr's 'inf', '-inf'
        const char *text = std::isnan(x) ? "nan" : x < 0 ? "-inf" : "inf";
        std::strcpy(out, text);
        return static_cast<int>(std::strlen(text));
    }
    char scientific[48];
    auto written = std::to_chars(scientific, scientific + sizeof scientific - 1, x,
                                 std::chars_format::scientific);
    *written.ptr = '\0';
    const char *in = scientific;
    char *o = out;
    if (*in == '-') *o++ = *in++;
    char digits[24];
    int count = 0;
    for (; *in && *in != 'e'; ++in) {
        if (*in != '.') digits[count++] = *in;
    }
    const int exponent = *in == 'e' ? std::atoi(in + 1) : 0;  // scientific: always there
    if (-4 <= exponent && exponent < 16) {
        if (exponent < 0) {
            *o++ = '0';
            *o++ = '.';
            for (int zero = -1; zero > exponent; --zero) *o++ = '0';
            for (int i = 0; i < count; ++i) *o++ = digits[i];
        } else {
            for (int i = 0; i <= exponent; ++i) *o++ = i < count ? digits[i] : '0';
            *o++ = '.';
            if (count > exponent + 1) {
                for (int i = exponent + 1; i < count; ++i) *o++ = digits[i];
            } else {
                *o++ = '0';
            }
        }
    } else {
        *o++ = digits[0];
        if (count > 1) {
            *o++ = '.';
            for (int i = 1; i < count; ++i) *o++ = digits[i];
        }
        *o++ = 'e';
        *o++ = exponent < 0 ? '-' : '+';
        int magnitude = exponent < 0 ? -exponent : exponent;
        if (magnitude >= 100) {
            *o++ = static_cast<char>('0' + magnitude / 100);
            magnitude %= 100;
        }
        *o++ = static_cast<char>('0' + magnitude / 10);
        *o++ = static_cast<char>('0' + magnitude % 10);
    }
    return static_cast<int>(o - out);
}

void float_repr(sqlite3_context *context, int, sqlite3_value **arguments) {
    switch (sqlite3_value_type(arguments[0])) {
    case SQLITE_NULL:
        return;  // NULL, as the Python function (SQLite does not call it with NULL anyway)
    case SQLITE_FLOAT: {
        const double value = sqlite3_value_double(arguments[0]);
        char text[48];
        sqlite3_result_text(context, text, repr_double(value, text), SQLITE_TRANSIENT);
        return;
    }
    default:  // float.__repr__ refuses anything else: so does this, failing the statement
        sqlite3_result_error(context, "exporter_float_repr takes a REAL", -1);
    }
}

// Hands SQLite a text of ``length`` bytes, written by ``write`` into memory SQLite frees.
template <class Write>
void result_text(sqlite3_context *context, sqlite3_int64 length, Write write) {
    auto *text = static_cast<char *>(sqlite3_malloc64(length + 1));
    if (text == nullptr) {
        sqlite3_result_error_nomem(context);
        return;
    }
    write(text);
    sqlite3_result_text64(context, text, static_cast<sqlite3_uint64>(length), sqlite3_free,
                          SQLITE_UTF8);
}

// The text of a TEXT argument and its size in bytes; nullptr where the call is answered
// already: any other value given back as it is, or out of memory converting it.
const char *text_argument(sqlite3_context *context, sqlite3_value *value,
                          sqlite3_int64 &size) {
    if (sqlite3_value_type(value) != SQLITE_TEXT) {
        sqlite3_result_value(context, value);
        return nullptr;
    }
    const auto *text = reinterpret_cast<const char *>(sqlite3_value_text(value));
    if (text == nullptr) {
        sqlite3_result_error_nomem(context);
        return nullptr;
    }
    size = sqlite3_value_bytes(value);
    return text;
}

const char BASE64_DIGITS[] =
    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

void base64(sqlite3_context *context, int, sqlite3_value **arguments) {
    if (sqlite3_value_type(arguments[0]) != SQLITE_BLOB) {
        sqlite3_result_value(context, arguments[0]);
        return;
    }
    const auto *in = static_cast<const unsigned char *>(sqlite3_value_blob(arguments[0]));
    const sqlite3_int64 size = sqlite3_value_bytes(arguments[0]);
    result_text(context, (size + 2) / 3 * 4, [&](char *o) {
        sqlite3_int64 i = 0;
        for (; i + 2 < size; i += 3) {
            const unsigned triple = in[i] << 16 | in[i + 1] << 8 | in[i + 2];
            *o++ = BASE64_DIGITS[triple >> 18];
            *o++ = BASE64_DIGITS[triple >> 12 & 63];
            *o++ = BASE64_DIGITS[triple >> 6 & 63];
            *o++ = BASE64_DIGITS[triple & 63];
        }
        if (i < size) {  // one or two bytes left: padded with "=" to four characters
            const bool two = i + 1 < size;
            const unsigned triple = in[i] << 16 | (two ? in[i + 1] << 8 : 0);
            *o++ = BASE64_DIGITS[triple >> 18];
            *o++ = BASE64_DIGITS[triple >> 12 & 63];
            *o++ = two ? BASE64_DIGITS[triple >> 6 & 63] : '=';
            *o++ = '=';
        }
    });
}

// SQLite keeps a NUL inside a text; the CSV and TSV lines are put together by printf's
// %s, which would end the text there (and leave a quoted field open): such an export fails
// instead, naming the formats that carry a NUL (render.py's SQL says the same without C++).
const char NUL_REFUSED[] =
    "a text holds a NUL character, which CSV and TSV cannot carry here: export it as "
    "NDJSON, JSON or Parquet, or leave that row out with a filter";

// What a text holds that CSV minds: a quote, a comma, CR or LF (then it is quoted, each
// of its quotes doubled), or a NUL.
struct CsvScan {
    bool special = false;
    sqlite3_int64 quotes = 0;
    bool nul = false;
};

CsvScan scan_csv(const char *in, sqlite3_int64 size) {
    CsvScan scan;
    for (sqlite3_int64 i = 0; i < size; ++i) {
        const char c = in[i];
        if (c == '"') {
            ++scan.quotes;
            scan.special = true;
        } else if (c == ',' || c == '\r' || c == '\n') {
            scan.special = true;
        } else if (c == '\0') {
            scan.nul = true;
        }
    }
    return scan;
}

// Writes the text quoted, its quotes doubled (size + quotes + 2 bytes); returns the end.
char *write_quoted(char *o, const char *in, sqlite3_int64 size) {
    *o++ = '"';
    for (sqlite3_int64 i = 0; i < size; ++i) {
        if (in[i] == '"') *o++ = '"';
        *o++ = in[i];
    }
    *o++ = '"';
    return o;
}

// A CSV field as Python's csv.writer writes it (QUOTE_MINIMAL): a text holding a quote,
// a comma, CR or LF quoted, its quotes doubled; any other text, and any other value, as
// it is. One pass, where SQL took four instr() and a replace().
void csv_field(sqlite3_context *context, int, sqlite3_value **arguments) {
    sqlite3_int64 size = 0;
    const char *in = text_argument(context, arguments[0], size);
    if (in == nullptr) return;
    const CsvScan scan = scan_csv(in, size);
    if (scan.nul) {
        sqlite3_result_error(context, NUL_REFUSED, -1);
        return;
    }
    if (!scan.special) {
        sqlite3_result_value(context, arguments[0]);
        return;
    }
    result_text(context, size + scan.quotes + 2,
                [&](char *o) { write_quoted(o, in, size); });
}

// A row's values as CSV fields for Parquet (formats/parquet.py), which Arrow's CSV reader
// reads as strings: each value after a comma (so that the line starts with an empty field
// of no value, and is never empty nor starts with a value's text, whose leading U+FEFF the
// reader would take for a byte-order mark), its text, NULL as nothing, and quoted where it
// is empty (so that it reads as '', not as NULL) or holds a quote, a comma, CR or LF, its
// quotes doubled; a NUL kept. Any number of values, up to SQLite's limit on a call's
// arguments (queries.py joins several calls' fields for a wider row).
void csv_texts(sqlite3_context *context, int count, sqlite3_value **arguments) {
    sqlite3_int64 length = count;  // the commas
    for (int a = 0; a < count; ++a) {
        if (sqlite3_value_type(arguments[a]) == SQLITE_NULL) continue;
        const auto *in = reinterpret_cast<const char *>(sqlite3_value_text(arguments[a]));
        if (in == nullptr) {
            sqlite3_result_error_nomem(context);
            return;
        }
        const sqlite3_int64 size = sqlite3_value_bytes(arguments[a]);
        const CsvScan scan = scan_csv(in, size);
        length += size + (scan.special || size == 0 ? scan.quotes + 2 : 0);
    }
    result_text(context, length, [&](char *o) {
        for (int a = 0; a < count; ++a) {
            *o++ = ',';
            if (sqlite3_value_type(arguments[a]) == SQLITE_NULL) continue;
            // Converted above: the same text again, no conversion.
            const auto *in = reinterpret_cast<const char *>(sqlite3_value_text(arguments[a]));
            const sqlite3_int64 size = sqlite3_value_bytes(arguments[a]);
            if (size == 0 || scan_csv(in, size).special) {
                o = write_quoted(o, in, size);
            } else {
                std::memcpy(o, in, static_cast<size_t>(size));
                o += size;
            }
        }
    });
}

// A TSV field as PostgreSQL's text COPY writes it: a backslash and the six control
// characters it spells (\t \n \r \b \f \v) escaped with a backslash, any other
// character as it is; any value but a text as it is. One pass, where SQL took seven
// replace().
void tsv_field(sqlite3_context *context, int, sqlite3_value **arguments) {
    sqlite3_int64 size = 0;
    const char *in = text_argument(context, arguments[0], size);
    if (in == nullptr) return;
    auto spelled = [](char c) -> char {
        switch (c) {
        case '\\': return '\\';
        case '\t': return 't';
        case '\n': return 'n';
        case '\r': return 'r';
        case '\b': return 'b';
        case '\f': return 'f';
        case '\v': return 'v';
        default: return 0;
        }
    };
    sqlite3_int64 escapes = 0;
    for (sqlite3_int64 i = 0; i < size; ++i) {
        if (in[i] == '\0') {
            sqlite3_result_error(context, NUL_REFUSED, -1);
            return;
        }
        if (spelled(in[i])) ++escapes;
    }
    if (escapes == 0) {
        sqlite3_result_value(context, arguments[0]);
        return;
    }
    result_text(context, size + escapes, [&](char *o) {
        for (sqlite3_int64 i = 0; i < size; ++i) {
            if (const char letter = spelled(in[i])) {
                *o++ = '\\';
                *o++ = letter;
            } else {
                *o++ = in[i];
            }
        }
    });
}

// Dates and times: the text SQLite's date functions would give, for the forms that need no
// more than their digits moved (strftime and date() parse every form, time zones and
// Julian days included, at about 0.45 s of CPU a million values). Each gives NULL for any
// other form, and the SQL calls SQLite's own function then (render.py), so that what these
// accept they write exactly as SQLite would: 'YYYY-MM-DD', then optionally one ' ' or 'T'
// and 'HH:MM', ':SS', '.' and fraction digits, valid as written (SQLite moves 02-30 on to
// March, which these leave to it), nothing after.

struct Moment {
    const char *date = nullptr;  // 'YYYY-MM-DD', or none
    const char *time = nullptr;  // 'HH:MM', or none
    const char *seconds = nullptr;  // 'SS', or none (zero)
};

int two_digits(const char *p) {
    auto digit = [](char c) { return c >= '0' && c <= '9'; };
    return digit(p[0]) && digit(p[1]) ? (p[0] - '0') * 10 + (p[1] - '0') : -1;
}

bool valid_date(const char *p) {
    if (p[4] != '-' || p[7] != '-') return false;
    const int century = two_digits(p), year2 = two_digits(p + 2);
    const int month = two_digits(p + 5), day = two_digits(p + 8);
    if (century < 0 || year2 < 0 || month < 1 || month > 12 || day < 1) return false;
    const int year = century * 100 + year2;
    if (year < 1) return false;  // year 0 and SQLite's edges: left to SQLite
    static const int DAYS[] = {31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};
    const bool leap = year % 4 == 0 && (year % 100 != 0 || year % 400 == 0);
    return day <= (month == 2 && leap ? 29 : DAYS[month - 1]);
}

const int MOST_FRACTION_DIGITS = 20;  // nanoseconds and more: no one stores longer ones

// 'HH:MM', 'HH:MM:SS' or 'HH:MM:SS.f...' filling all of [p, end).
bool valid_time(const char *p, const char *end, Moment &moment) {
    const auto size = end - p;
    if (size < 5 || p[2] != ':') return false;
    const int hour = two_digits(p), minute = two_digits(p + 3);
    if (hour < 0 || hour > 23 || minute < 0 || minute > 59) return false;
    moment.time = p;
    if (size == 5) return true;
    if (size < 8 || p[5] != ':') return false;
    const int second = two_digits(p + 6);
    if (second < 0 || second > 59) return false;
    moment.seconds = p + 6;
    if (size == 8) return true;
    if (p[8] != '.' || size == 9) return false;
    // SQLite reads the fraction's digits into a double: past about 308 of them it is
    // infinite, and SQLite's functions give NULL. Long fractions are SQLite's to read.
    if (size > 9 + MOST_FRACTION_DIGITS) return false;
    for (const char *digit = p + 9; digit < end; ++digit) {
        if (*digit < '0' || *digit > '9') return false;
    }
    // SQLite rounds to the millisecond: .9995 and up would carry into the next second.
    return !(size > 12 && p[9] == '9' && p[10] == '9' && p[11] == '9');
}

bool parse_moment(sqlite3_value *value, bool date_first, Moment &moment) {
    if (sqlite3_value_type(value) != SQLITE_TEXT) return false;
    const auto *text = reinterpret_cast<const char *>(sqlite3_value_text(value));
    if (text == nullptr) return false;  // out of memory: SQLite's own function then
    const char *end = text + sqlite3_value_bytes(value);
    if (!date_first) return valid_time(text, end, moment);
    if (end - text < 10 || !valid_date(text)) return false;
    moment.date = text;
    if (end - text == 10) return true;
    if (text[10] != ' ' && text[10] != 'T') return false;
    return valid_time(text + 11, end, moment);
}

void put_time(const Moment &moment, char *o) {
    const char zeros[] = "00:00";
    std::memcpy(o, moment.time ? moment.time : zeros, 5);
    o[5] = ':';
    std::memcpy(o + 6, moment.seconds ? moment.seconds : zeros, 2);
}

// strftime('%Y-%m-%dT%H:%M:%SZ', x)
void moment_timestamp(sqlite3_context *context, int, sqlite3_value **arguments) {
    Moment moment;
    if (!parse_moment(arguments[0], true, moment)) return;  // NULL: SQLite's turn
    char text[20];
    std::memcpy(text, moment.date, 10);
    text[10] = 'T';
    put_time(moment, text + 11);
    text[19] = 'Z';
    sqlite3_result_text(context, text, 20, SQLITE_TRANSIENT);
}

// date(x)
void moment_date(sqlite3_context *context, int, sqlite3_value **arguments) {
    Moment moment;
    if (!parse_moment(arguments[0], true, moment)) return;
    sqlite3_result_text(context, moment.date, 10, SQLITE_TRANSIENT);
}

// time(x), of a time alone ('12:00' is 12:00:00); a date's is SQLite's to give
void moment_time(sqlite3_context *context, int, sqlite3_value **arguments) {
    Moment moment;
    if (!parse_moment(arguments[0], false, moment)) return;
    char text[8];
    put_time(moment, text);
    sqlite3_result_text(context, text, 8, SQLITE_TRANSIENT);
}

PyModuleDef module = {PyModuleDef_HEAD_INIT, "_sqlite_functions",
                      "SQLite functions in C++: see exporter/sqlite_functions.py.", 0,
                      nullptr, nullptr, nullptr, nullptr, nullptr};

}  // namespace

// SQLite's entry point for an extension, given to sqlite3_auto_extension: SQLite calls it
// for every connection opened afterwards in the process, with its own API routines.
extern "C" int exporter_sqlite_init(sqlite3 *db, char **, const sqlite3_api_routines *api) {
    // A SQLite built without extension loading passes no routines: nothing is added, and
    // sqlite_functions.py, finding the functions missing, renders without them.
    if (api == nullptr) return SQLITE_OK;
    SQLITE_EXTENSION_INIT2(api);
    // Deterministic: SQLite may compute a call once per statement; innocuous: no side
    // effects, so allowed wherever SQLite's defences restrict what SQL may call.
    const int flags = SQLITE_UTF8 | SQLITE_DETERMINISTIC | SQLITE_INNOCUOUS;
    int status = sqlite3_create_function(db, "exporter_float_repr", 1, flags, nullptr,
                                         float_repr, nullptr, nullptr);
    if (status == SQLITE_OK) {
        status = sqlite3_create_function(db, "exporter_base64", 1, flags, nullptr, base64,
                                         nullptr, nullptr);
    }
    const struct {
        const char *name;
        void (*function)(sqlite3_context *, int, sqlite3_value **);
    } more[] = {{"exporter_csv_field", csv_field}, {"exporter_tsv_field", tsv_field},
                {"exporter_timestamp", moment_timestamp},
                {"exporter_date", moment_date}, {"exporter_time", moment_time}};
    for (const auto &each : more) {
        if (status == SQLITE_OK) {
            status = sqlite3_create_function(db, each.name, 1, flags, nullptr, each.function,
                                             nullptr, nullptr);
        }
    }
    if (status == SQLITE_OK) {  // -1: any number of arguments
        status = sqlite3_create_function(db, "exporter_csv_texts", -1, flags, nullptr,
                                         csv_texts, nullptr, nullptr);
    }
    return status;
}

PyMODINIT_FUNC PyInit__sqlite_functions() { return PyModule_Create(&module); }
