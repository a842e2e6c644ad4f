#pragma once
// Wall-clock helpers. Stored times are UTC ISO-8601 with milliseconds ("2026-12-02T00:50:00.123Z"),
// which sort as text on both database dialects.
#include <cstdint>
#include <string>

namespace marchproxy::manager::util {

std::string nowIso();
std::string isoFromUnixMs(std::int64_t ms);
std::int64_t unixNow();  // seconds

}  // namespace marchproxy::manager::util
