// The init's own messages: one line each on the console, prefixed so that they stand apart
// from the workload's output.
#pragma once

#include <unistd.h>

#include <algorithm>
#include <cstdarg>
#include <cstdio>

namespace compactor::init {

inline constexpr const char* log_prefix = "compactor-init: ";

// Writes `log_prefix`, the formatted text and a newline to stderr in one write, so that the
// line is not interleaved with the workload's output.
[[gnu::format(printf, 1, 2)]] inline void log_line(const char* format, ...) {
  char line[1024];
  int length = std::snprintf(line, sizeof line, "%s", log_prefix);
  std::va_list arguments;
  va_start(arguments, format);
  const int text = std::vsnprintf(line + length, sizeof line - length - 1, format, arguments);
  va_end(arguments);
  length = std::min<int>(length + std::max(text, 0), sizeof line - 2);
  line[length++] = '\n';
  [[maybe_unused]] const auto written = ::write(STDERR_FILENO, line, length);
}

} // namespace compactor::init
