// Errors raised by the library.
//
// Host failures (a system call, libcurl, libarchive) are exceptions that carry the name of the
// call and the system's text for it; the command line turns any of them into one line and a
// non-zero exit status.
#pragma once

#include <cerrno>
#include <stdexcept>
#include <string>
#include <string_view>
#include <system_error>

#include <fmt/format.h>

namespace compactor {

// A failure that is not described by an errno value: bad input, a protocol violation, a
// missing capability. The message is a complete sentence fragment meant for the user.
class error : public std::runtime_error {
public:
  using std::runtime_error::runtime_error;
};

// Throws std::system_error for the current errno, naming the call that failed.
[[noreturn]] inline void throw_errno(std::string_view call) {
  throw std::system_error(errno, std::system_category(), std::string(call));
}

// Throws std::system_error for an explicit error number (for APIs that return -errno).
[[noreturn]] inline void throw_errno(int error_number, std::string_view call) {
  throw std::system_error(error_number, std::system_category(), std::string(call));
}

// Returns `result` unless it is -1, in which case the current errno is thrown.
template <typename Result>
Result check_syscall(Result result, std::string_view call) {
  if (result == Result(-1)) {
    throw_errno(call);
  }
  return result;
}

} // namespace compactor
