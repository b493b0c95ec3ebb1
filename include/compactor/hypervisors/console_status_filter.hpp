// Passes a guest console through while picking out the init's status line
// (guest::exit_status_console_prefix followed by the decimal status), which is not shown.
//
// Output is forwarded as soon as it arrives, so prompts without a newline appear at once;
// only a line that so far matches the start of the status line is held back until it either
// completes (and is consumed) or stops matching (and is released).
#pragma once

#include <charconv>
#include <optional>
#include <string>
#include <string_view>
#include <utility>

#include <compactor/guest/protocol.hpp>

namespace compactor::hypervisors {

class console_status_filter {
public:
  // With `plain_newlines`, the "\r\n" that the guest's serial console ends lines with becomes
  // "\n", as suits output that goes to a file or a pipe rather than a terminal.
  explicit console_status_filter(bool plain_newlines = false) : plain_newlines_(plain_newlines) {}

  // Feeds a chunk of console output; returns what should be shown of it.
  std::string feed(std::string_view chunk) {
    std::string shown = feed_lines(chunk);
    if (!plain_newlines_) {
      return shown;
    }
    std::string plain;
    for (const char c : shown) {
      if (std::exchange(carriage_return_, false) && c != '\n') {
        plain.push_back('\r');
      }
      if (c == '\r') {
        carriage_return_ = true;
      } else {
        plain.push_back(c);
      }
    }
    return plain;
  }

private:
  std::string feed_lines(std::string_view chunk) {
    std::string shown;
    for (const char c : chunk) {
      if (std::exchange(swallow_newline_, false) && c == '\n') {
        at_line_start_ = true;
        continue;
      }
      if (at_line_start_ || !held_.empty()) {
        held_.push_back(c);
        if (!resolve_held(shown)) {
          continue;
        }
      } else {
        shown.push_back(c);
      }
      at_line_start_ = c == '\n';
    }
    return shown;
  }

public:
  // What is still held back when the console ends.
  std::string finish() {
    auto rest = std::exchange(held_, {});
    if (std::exchange(carriage_return_, false)) {
      rest.insert(rest.begin(), '\r');
    }
    return rest;
  }

  [[nodiscard]] std::optional<int> status() const noexcept { return status_; }

private:
  // Returns true when `held_` was released into `shown` or consumed; false while it may still
  // become the status line.
  bool resolve_held(std::string& shown) {
    const std::string_view prefix = guest::exit_status_console_prefix;
    const std::string_view held = held_;
    if (held.size() <= prefix.size()) {
      if (prefix.starts_with(held)) {
        return false;
      }
    } else if (held.starts_with(prefix)) {
      const char last = held.back();
      if (last >= '0' && last <= '9') {
        return false;
      }
      if (last == '\n' || last == '\r') {
        const auto digits = held.substr(prefix.size(), held.size() - prefix.size() - 1);
        int value = 0;
        const auto [end, error] = std::from_chars(digits.data(), digits.data() + digits.size(),
                                                  value);
        if (error == std::errc{} && end == digits.data() + digits.size() && value >= 0 &&
            value <= 255) {
          status_ = value;
          held_.clear();
          swallow_newline_ = last == '\r'; // the console ends lines with "\r\n"
          return true;
        }
      }
    }
    shown += held_;
    held_.clear();
    return true;
  }

  std::string held_;
  bool at_line_start_ = true;
  bool swallow_newline_ = false;
  bool plain_newlines_ = false;
  bool carriage_return_ = false;
  std::optional<int> status_;
};

} // namespace compactor::hypervisors
