#pragma once
// Human durations used in configs: "250ms", "5s", "2m", "1h", "1m30s".
#include <chrono>
#include <optional>
#include <string>
#include <string_view>

namespace marchproxy {

using Millis = std::chrono::milliseconds;

// Parses a duration; nullopt if the text is not a valid, non-negative duration.
std::optional<Millis> parseDuration(std::string_view text);
// Formats as the shortest exact form ("1500ms" -> "1500ms", "60000ms" -> "1m").
std::string formatDuration(Millis d);

}  // namespace marchproxy
