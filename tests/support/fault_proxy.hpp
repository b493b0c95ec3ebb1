// A fault-injecting HTTP proxy for tests, in front of a registry on loopback (plain HTTP).
//
// It listens on 127.0.0.1 and forwards each request to the registry, one request per
// connection. A GET whose target contains a rule's text gets that rule's fault instead of a
// faithful answer, for as many requests as the rule says. It can also demand a Bearer token
// that it hands out itself, and it has a second listener on 127.0.0.2 ("the other host", a
// different host to curl) that serves any path from the registry and records what it was sent,
// so a redirect there shows whether credentials followed it. One thread serves both listeners;
// the destructor stops it and closes every socket.
#pragma once

#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/time.h>

#include <algorithm>
#include <atomic>
#include <cctype>
#include <chrono>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <thread>
#include <utility>
#include <vector>

#include <catch2/catch.hpp>
#include <fmt/format.h>

#include <compactor/support/unique_fd.hpp>

namespace compactor::testing {

enum class fault_kind {
  corrupt,           // one body byte flipped, so the content no longer matches its digest
  truncate,          // the connection closed cleanly halfway through the promised body
  drop,              // the connection reset halfway through the body
  too_many_requests, // 429 with Retry-After: 1, nothing forwarded
  unavailable,       // 503 without Retry-After, nothing forwarded
  slow,              // the answer trickled out in small pieces over about a second
  stall,             // the headers, then silence until the client hangs up
  redirect,          // 307 to the same path on the other host
  oversize,          // the body, then 16 MiB and one byte more: longer than any manifest may be
};

struct fault_rule {
  static constexpr int every_time = -1;

  fault_kind kind;
  std::string target_contains; // a GET whose path and query contain this
  int times = 1;               // how many such requests get the fault, or every_time
};

// One request as a listener saw it.
struct proxied_request {
  bool other_host = false; // received by the redirect target rather than the proxy
  std::string method;
  std::string target;
  std::string authorization; // the Authorization header, empty when absent
  std::optional<fault_kind> fault;
  int status = 0; // the status of the answer (sent whole or not, as the fault says)
  std::chrono::steady_clock::time_point at;
};

namespace detail {

struct http_message {
  int status = 0;
  std::string reason;
  std::vector<std::pair<std::string, std::string>> headers;
  std::string body;
};

struct incoming_request {
  std::string method;
  std::string target;
  std::vector<std::pair<std::string, std::string>> headers; // names in lower case

  [[nodiscard]] std::string header(std::string_view name) const {
    for (const auto& [key, value] : headers) {
      if (key == name) {
        return value;
      }
    }
    return {};
  }
};

inline std::string lower(std::string text) {
  std::ranges::transform(text, text.begin(),
                         [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
  return text;
}

inline std::string_view trim_spaces(std::string_view text) {
  while (!text.empty() && (text.front() == ' ' || text.front() == '\t')) {
    text.remove_prefix(1);
  }
  while (!text.empty() && (text.back() == ' ' || text.back() == '\t' || text.back() == '\r')) {
    text.remove_suffix(1);
  }
  return text;
}

// "Name: value" lines up to the blank line that ends a header block.
inline std::vector<std::pair<std::string, std::string>> parse_header_lines(std::string_view block) {
  std::vector<std::pair<std::string, std::string>> headers;
  while (!block.empty()) {
    const auto end = std::min(block.find("\r\n"), block.size());
    const auto line = block.substr(0, end);
    block.remove_prefix(std::min(end + 2, block.size()));
    if (const auto colon = line.find(':'); colon != std::string_view::npos) {
      headers.emplace_back(lower(std::string(trim_spaces(line.substr(0, colon)))),
                           std::string(trim_spaces(line.substr(colon + 1))));
    }
  }
  return headers;
}

inline unique_fd listen_on(const char* address, int& port) {
  unique_fd listener(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
  REQUIRE(listener);
  sockaddr_in where{};
  where.sin_family = AF_INET;
  REQUIRE(::inet_pton(AF_INET, address, &where.sin_addr) == 1);
  REQUIRE(::bind(listener.get(), reinterpret_cast<sockaddr*>(&where), sizeof where) == 0);
  REQUIRE(::listen(listener.get(), 16) == 0);
  socklen_t length = sizeof where;
  REQUIRE(::getsockname(listener.get(), reinterpret_cast<sockaddr*>(&where), &length) == 0);
  port = ntohs(where.sin_port);
  return listener;
}

inline void set_timeouts(int fd, std::chrono::seconds limit) {
  const timeval value{static_cast<time_t>(limit.count()), 0};
  ::setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &value, sizeof value);
  ::setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &value, sizeof value);
}

inline bool send_all(int fd, std::string_view bytes) {
  while (!bytes.empty()) {
    const ssize_t sent = ::send(fd, bytes.data(), bytes.size(), MSG_NOSIGNAL);
    if (sent <= 0) {
      return false;
    }
    bytes.remove_prefix(static_cast<std::size_t>(sent));
  }
  return true;
}

// The request line and headers; a body is neither expected nor read (GET only).
inline std::optional<incoming_request> read_request(int fd) {
  std::string text;
  char buffer[4096];
  while (text.find("\r\n\r\n") == std::string::npos) {
    const ssize_t got = ::recv(fd, buffer, sizeof buffer, 0);
    if (got <= 0 || text.size() > 65536) {
      return std::nullopt;
    }
    text.append(buffer, static_cast<std::size_t>(got));
  }
  const auto line_end = text.find("\r\n");
  const std::string_view line(text.data(), line_end);
  const auto first_space = line.find(' ');
  const auto last_space = line.rfind(' ');
  if (first_space == std::string_view::npos || last_space == first_space) {
    return std::nullopt;
  }
  incoming_request request;
  request.method = std::string(line.substr(0, first_space));
  request.target = std::string(line.substr(first_space + 1, last_space - first_space - 1));
  request.headers = parse_header_lines(
      std::string_view(text).substr(line_end + 2, text.find("\r\n\r\n") - line_end));
  return request;
}

inline std::string reason_of(int status) {
  switch (status) {
  case 200:
    return "OK";
  case 307:
    return "Temporary Redirect";
  case 401:
    return "Unauthorized";
  case 429:
    return "Too Many Requests";
  case 502:
    return "Bad Gateway";
  case 503:
    return "Service Unavailable";
  default:
    return "Other";
  }
}

inline http_message make_answer(int status,
                                std::vector<std::pair<std::string, std::string>> headers,
                                std::string body) {
  return {status, reason_of(status), std::move(headers), std::move(body)};
}

// The status line and headers of `answer`, with its body's length; the connection closes after.
inline std::string head_of(const http_message& answer) {
  std::string text = fmt::format("HTTP/1.1 {} {}\r\n", answer.status, answer.reason);
  for (const auto& [name, value] : answer.headers) {
    text += fmt::format("{}: {}\r\n", name, value);
  }
  return text + fmt::format("Content-Length: {}\r\nConnection: close\r\n\r\n", answer.body.size());
}

// Sends `request` to the registry at host:port as HTTP/1.0, so that the answer ends where the
// connection does (no chunked encoding), and reads the whole answer.
inline http_message fetch_upstream(const std::string& upstream, const incoming_request& request) {
  const auto colon = upstream.rfind(':');
  sockaddr_in where{};
  where.sin_family = AF_INET;
  where.sin_port = htons(static_cast<std::uint16_t>(std::stoi(upstream.substr(colon + 1))));
  const auto bad_gateway = [](std::string why) { return make_answer(502, {}, std::move(why)); };
  if (::inet_pton(AF_INET, upstream.substr(0, colon).c_str(), &where.sin_addr) != 1) {
    return bad_gateway("the upstream is not an IPv4 host:port");
  }
  unique_fd connection(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
  if (!connection ||
      ::connect(connection.get(), reinterpret_cast<sockaddr*>(&where), sizeof where) != 0) {
    return bad_gateway("the upstream does not answer");
  }
  set_timeouts(connection.get(), std::chrono::seconds(10));

  std::string text =
      fmt::format("{} {} HTTP/1.0\r\nHost: {}\r\n", request.method, request.target, upstream);
  for (const auto& [name, value] : request.headers) {
    // The registry needs no credentials; hop-by-hop headers are the proxy's own.
    if (name != "host" && name != "authorization" && name != "connection" && name != "keep-alive" &&
        !name.starts_with("proxy-")) {
      text += fmt::format("{}: {}\r\n", name, value);
    }
  }
  if (!send_all(connection.get(), text + "\r\n")) {
    return bad_gateway("the upstream did not take the request");
  }

  std::string reply;
  char buffer[65536];
  ssize_t got = 0;
  while ((got = ::recv(connection.get(), buffer, sizeof buffer, 0)) > 0) {
    reply.append(buffer, static_cast<std::size_t>(got));
  }
  const auto head_end = reply.find("\r\n\r\n");
  const auto line_end = reply.find("\r\n");
  if (got < 0 || head_end == std::string::npos || !reply.starts_with("HTTP/")) {
    return bad_gateway("the upstream's answer was cut short");
  }

  http_message answer;
  const std::string_view line(reply.data(), line_end);
  const auto space = line.find(' ');
  answer.status = std::stoi(std::string(line.substr(space + 1, 3)));
  answer.reason = std::string(trim_spaces(line.substr(std::min(space + 5, line.size()))));
  for (auto& header :
       parse_header_lines(std::string_view(reply).substr(line_end + 2, head_end - line_end))) {
    if (header.first != "content-length" && header.first != "connection" &&
        header.first != "transfer-encoding" && header.first != "keep-alive") {
      answer.headers.push_back(std::move(header));
    }
  }
  answer.body = reply.substr(head_end + 4);
  return answer;
}

} // namespace detail

class fault_proxy {
public:
  // `upstream`: the registry's IPv4 host:port.
  explicit fault_proxy(std::string upstream) : upstream_(std::move(upstream)) {
    int port = 0;
    listener_ = detail::listen_on("127.0.0.1", port);
    address_ = fmt::format("127.0.0.1:{}", port);
    other_listener_ = detail::listen_on("127.0.0.2", port);
    other_address_ = fmt::format("127.0.0.2:{}", port);
    thread_ = std::thread([this] { serve(); });
  }
  fault_proxy(const fault_proxy&) = delete;
  fault_proxy& operator=(const fault_proxy&) = delete;
  ~fault_proxy() {
    stop_ = true;
    thread_.join();
  }

  // host:port of the proxy, to be used as the registry's address.
  [[nodiscard]] const std::string& address() const { return address_; }
  // host:port of the other host that redirects lead to.
  [[nodiscard]] const std::string& other_address() const { return other_address_; }

  void add(fault_rule rule) {
    const std::lock_guard lock(mutex_);
    rules_.push_back(std::move(rule));
  }

  // Answers 401 with a Bearer challenge to every /v2/ request without this token, and hands
  // the token out at /token (RFC 6750; Docker's token protocol without credentials).
  void require_bearer_token(std::string token) {
    const std::lock_guard lock(mutex_);
    token_ = std::move(token);
  }

  [[nodiscard]] std::vector<proxied_request> requests() const {
    const std::lock_guard lock(mutex_);
    return seen_;
  }

  // The requests whose target contains `text`, as the proxy (not the other host) saw them.
  [[nodiscard]] std::vector<proxied_request> requests_for(std::string_view text) const {
    std::vector<proxied_request> matching;
    for (auto& request : requests()) {
      if (!request.other_host && request.target.find(text) != std::string::npos) {
        matching.push_back(std::move(request));
      }
    }
    return matching;
  }

private:
  void serve() {
    while (!stop_) {
      pollfd ready[] = {{listener_.get(), POLLIN, 0}, {other_listener_.get(), POLLIN, 0}};
      if (::poll(ready, 2, 20) <= 0) {
        continue;
      }
      for (int i = 0; i < 2; ++i) {
        if ((ready[i].revents & POLLIN) == 0) {
          continue;
        }
        unique_fd connection(::accept4(ready[i].fd, nullptr, nullptr, SOCK_CLOEXEC));
        if (!connection) {
          continue;
        }
        detail::set_timeouts(connection.get(), std::chrono::seconds(5));
        if (const auto request = detail::read_request(connection.get())) {
          answer(connection.get(), *request, i == 1);
        }
      }
    }
  }

  void answer(int fd, const detail::incoming_request& request, bool other_host) {
    proxied_request seen;
    seen.other_host = other_host;
    seen.method = request.method;
    seen.target = request.target;
    seen.authorization = request.header("authorization");
    seen.at = std::chrono::steady_clock::now();
    const auto token = bearer_token();
    detail::http_message reply;
    if (other_host) {
      reply = detail::fetch_upstream(upstream_, request);
    } else if (request.target.starts_with("/token")) {
      reply = detail::make_answer(200, {{"Content-Type", "application/json"}},
                                  fmt::format(R"({{"token":"{}"}})", token));
    } else if (!token.empty() && seen.authorization != "Bearer " + token) {
      const auto challenge =
          fmt::format(R"(Bearer realm="http://{}/token",service="fault-proxy")", address_);
      reply = detail::make_answer(
          401, {{"WWW-Authenticate", challenge}, {"Content-Type", "application/json"}},
          R"({"errors":[{"code":"UNAUTHORIZED","message":"token required"}]})");
    } else {
      seen.fault = take_fault(request);
      reply = answer_for(request, seen.fault);
    }

    // Recorded before any byte leaves, so that a client done reading finds it.
    seen.status = reply.status;
    {
      const std::lock_guard lock(mutex_);
      seen_.push_back(seen);
    }
    send(fd, reply, seen.fault);
  }

  std::string bearer_token() const {
    const std::lock_guard lock(mutex_);
    return token_;
  }

  std::optional<fault_kind> take_fault(const detail::incoming_request& request) {
    const std::lock_guard lock(mutex_);
    if (request.method != "GET") {
      return std::nullopt;
    }
    for (auto& rule : rules_) {
      if (rule.times != 0 && request.target.find(rule.target_contains) != std::string::npos) {
        if (rule.times > 0) {
          --rule.times;
        }
        return rule.kind;
      }
    }
    return std::nullopt;
  }

  // The registry's answer, or the fault's own, with the content already damaged for corrupt.
  detail::http_message answer_for(const detail::incoming_request& request,
                                  std::optional<fault_kind> fault) const {
    using detail::make_answer;
    if (fault == fault_kind::too_many_requests) {
      return make_answer(429, {{"Retry-After", "1"}},
                         R"({"errors":[{"code":"TOOMANYREQUESTS","message":"slow down"}]})");
    }
    if (fault == fault_kind::unavailable) {
      return make_answer(503, {}, "busy");
    }
    if (fault == fault_kind::redirect) {
      return make_answer(307, {{"Location", "http://" + other_address_ + request.target}}, "");
    }
    auto reply = detail::fetch_upstream(upstream_, request);
    if (fault == fault_kind::corrupt && !reply.body.empty()) {
      auto& byte = reply.body[reply.body.size() / 2];
      byte = static_cast<char>(byte ^ 0x01);
    }
    if (fault == fault_kind::oversize) {
      reply.body.append((std::size_t{16} << 20) + 1, '\0');
    }
    return reply;
  }

  void send(int fd, const detail::http_message& reply, std::optional<fault_kind> fault) {
    const auto head = detail::head_of(reply);
    const auto half = std::string_view(reply.body).substr(0, reply.body.size() / 2);
    if (fault == fault_kind::truncate) {
      detail::send_all(fd, head + std::string(half));
      ::shutdown(fd, SHUT_WR);
    } else if (fault == fault_kind::drop) {
      detail::send_all(fd, head + std::string(half));
      // Closing with a zero linger time sends a reset instead of an orderly end.
      const linger abort_on_close{1, 0};
      ::setsockopt(fd, SOL_SOCKET, SO_LINGER, &abort_on_close, sizeof abort_on_close);
    } else if (fault == fault_kind::slow) {
      trickle(fd, head, reply.body);
    } else if (fault == fault_kind::stall) {
      detail::send_all(fd, head);
      wait_for_hang_up(fd);
    } else {
      detail::send_all(fd, head + reply.body);
    }
  }

  // The headers after 200 ms, then the body in 32 pieces 25 ms apart.
  void trickle(int fd, std::string_view head, std::string_view body) const {
    const auto pause = [this](std::chrono::milliseconds length) {
      const auto until = std::chrono::steady_clock::now() + length;
      while (!stop_ && std::chrono::steady_clock::now() < until) {
        std::this_thread::sleep_for(std::chrono::milliseconds(5));
      }
    };
    pause(std::chrono::milliseconds(200));
    if (!detail::send_all(fd, head)) {
      return;
    }
    const auto piece = std::max<std::size_t>(body.size() / 32, 1);
    for (std::size_t at = 0; at < body.size() && !stop_; at += piece) {
      pause(std::chrono::milliseconds(25));
      if (!detail::send_all(fd, body.substr(at, piece))) {
        return;
      }
    }
  }

  // Sends nothing until the client closes its end (or the proxy stops).
  void wait_for_hang_up(int fd) const {
    char byte = 0;
    while (!stop_) {
      pollfd ready{fd, POLLIN, 0};
      if (::poll(&ready, 1, 20) > 0 && ::recv(fd, &byte, 1, MSG_DONTWAIT) <= 0) {
        return;
      }
    }
  }

  std::string upstream_;
  unique_fd listener_;
  unique_fd other_listener_;
  std::string address_;
  std::string other_address_;

  mutable std::mutex mutex_;
  std::vector<fault_rule> rules_;
  std::string token_;
  std::vector<proxied_request> seen_;

  std::atomic<bool> stop_ = false;
  std::thread thread_; // last: starts after everything it uses
};

} // namespace compactor::testing
