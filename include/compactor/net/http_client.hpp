// A small HTTP client over libcurl, shared by the Docker daemon source (HTTP over a unix
// socket) and the registry source (HTTPS or loopback HTTP).
//
// One client owns one curl easy handle, so consecutive requests reuse the connection. A body
// can be collected into the response or streamed to a sink as it arrives; an exception thrown
// by the sink aborts the transfer and is rethrown to the caller unchanged.
#pragma once

#include <curl/curl.h>

#include <algorithm>
#include <cctype>
#include <exception>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include <fmt/format.h>

#include <compactor/support/error.hpp>

namespace compactor::net {

// A transfer that did not complete: no connection, a timeout, a dropped connection, TLS.
class transfer_error : public compactor::error {
public:
  transfer_error(const std::string& message, CURLcode code, std::string reason = {})
      : compactor::error(message), code_(code),
        reason_(reason.empty() ? message : std::move(reason)) {}

  [[nodiscard]] CURLcode code() const noexcept { return code_; }

  // libcurl's words for the failure, without the request ("transfer closed with 5 bytes
  // remaining to read").
  [[nodiscard]] const std::string& reason() const noexcept { return reason_; }

private:
  CURLcode code_;
  std::string reason_;
};

struct http_request {
  std::string method = "GET";
  std::string url;
  std::vector<std::string> headers; // each "Name: value"
  std::string body;
  std::string unix_socket; // when set, HTTP goes over this socket and the URL's host is ignored
  std::string ca_file;     // an extra CA bundle for HTTPS, besides the system's
  bool follow_redirects = false;
  long connect_timeout_ms = 10'000;
  long stall_timeout_s = 60;     // give up when no byte arrives for this long
  std::size_t max_body_size = 0; // a body collected in the response may not be longer; 0: any
};

struct http_response {
  long status = 0;
  std::vector<std::pair<std::string, std::string>> headers; // of the final response, in order
  std::string body;          // empty when the body went to a sink
  std::string effective_url; // after redirects

  // The last value of a header, compared without regard to case, or nothing.
  [[nodiscard]] std::optional<std::string> header(std::string_view name) const {
    const auto same = [](std::string_view a, std::string_view b) {
      return std::ranges::equal(a, b, [](unsigned char x, unsigned char y) {
        return std::tolower(x) == std::tolower(y);
      });
    };
    for (auto it = headers.rbegin(); it != headers.rend(); ++it) {
      if (same(it->first, name)) {
        return it->second;
      }
    }
    return std::nullopt;
  }

  [[nodiscard]] bool ok() const noexcept { return status >= 200 && status < 300; }
};

// Receives the body of a successful (2xx) response piece by piece.
using body_sink = std::function<void(std::string_view chunk)>;

namespace detail {

inline void initialize_curl_once() {
  static const CURLcode result = curl_global_init(CURL_GLOBAL_DEFAULT);
  if (result != CURLE_OK) {
    throw transfer_error(fmt::format("curl_global_init: {}", curl_easy_strerror(result)), result);
  }
}

struct curl_handle_deleter {
  void operator()(CURL* handle) const noexcept { curl_easy_cleanup(handle); }
};

struct curl_slist_deleter {
  void operator()(curl_slist* list) const noexcept { curl_slist_free_all(list); }
};

inline std::string_view trim(std::string_view text) {
  while (!text.empty() && std::isspace(static_cast<unsigned char>(text.front()))) {
    text.remove_prefix(1);
  }
  while (!text.empty() && std::isspace(static_cast<unsigned char>(text.back()))) {
    text.remove_suffix(1);
  }
  return text;
}

// State shared with the libcurl callbacks during one transfer.
struct transfer_state {
  CURL* handle = nullptr;
  http_response* response = nullptr;
  const body_sink* sink = nullptr;
  std::exception_ptr sink_failure;
  std::size_t max_body_size = 0;
  bool body_too_large = false;
};

inline size_t on_header(char* data, size_t size, size_t count, void* user) {
  auto& state = *static_cast<transfer_state*>(user);
  const std::string_view line(data, size * count);

  // A status line starts a new response (after a redirect or "100 Continue").
  if (line.starts_with("HTTP/")) {
    state.response->headers.clear();
    return line.size();
  }

  const auto colon = line.find(':');
  if (colon != std::string_view::npos) {
    state.response->headers.emplace_back(std::string(trim(line.substr(0, colon))),
                                         std::string(trim(line.substr(colon + 1))));
  }
  return line.size();
}

inline size_t on_body(char* data, size_t size, size_t count, void* user) {
  auto& state = *static_cast<transfer_state*>(user);
  const std::string_view chunk(data, size * count);

  long status = 0;
  curl_easy_getinfo(state.handle, CURLINFO_RESPONSE_CODE, &status);
  if (state.sink == nullptr || status < 200 || status >= 300) {
    if (state.max_body_size != 0 &&
        state.response->body.size() + chunk.size() > state.max_body_size) {
      state.body_too_large = true;
      return 0; // makes libcurl abort the transfer with CURLE_WRITE_ERROR
    }
    state.response->body.append(chunk);
    return chunk.size();
  }

  try {
    (*state.sink)(chunk);
  } catch (...) {
    state.sink_failure = std::current_exception();
    return 0; // makes libcurl abort the transfer with CURLE_WRITE_ERROR
  }
  return chunk.size();
}

} // namespace detail

class http_client {
public:
  http_client() {
    detail::initialize_curl_once();
    handle_.reset(curl_easy_init());
    if (!handle_) {
      throw transfer_error("curl_easy_init failed", CURLE_FAILED_INIT);
    }
  }

  // Performs the request and collects the body in the response.
  http_response perform(const http_request& request) { return perform(request, nullptr); }

  // Performs the request; a 2xx body goes to `sink`, any other body into the response.
  http_response perform(const http_request& request, const body_sink& sink) {
    return perform(request, &sink);
  }

private:
  http_response perform(const http_request& request, const body_sink* sink) {
    CURL* curl = handle_.get();
    curl_easy_reset(curl);

    http_response response;
    detail::transfer_state state{curl, &response, sink, nullptr, request.max_body_size, false};

    std::unique_ptr<curl_slist, detail::curl_slist_deleter> header_list;
    for (const auto& header : request.headers) {
      curl_slist* extended = curl_slist_append(header_list.get(), header.c_str());
      if (extended == nullptr) {
        throw transfer_error("curl_slist_append: out of memory", CURLE_OUT_OF_MEMORY);
      }
      static_cast<void>(header_list.release());
      header_list.reset(extended);
    }

    curl_easy_setopt(curl, CURLOPT_URL, request.url.c_str());
    curl_easy_setopt(curl, CURLOPT_CUSTOMREQUEST, request.method.c_str());
    if (request.method == "HEAD") {
      curl_easy_setopt(curl, CURLOPT_NOBODY, 1L);
    }
    if (!request.body.empty() || request.method == "POST" || request.method == "PUT") {
      curl_easy_setopt(curl, CURLOPT_POSTFIELDS, request.body.data());
      curl_easy_setopt(curl, CURLOPT_POSTFIELDSIZE_LARGE,
                       static_cast<curl_off_t>(request.body.size()));
    }
    curl_easy_setopt(curl, CURLOPT_HTTPHEADER, header_list.get());
    if (!request.unix_socket.empty()) {
      curl_easy_setopt(curl, CURLOPT_UNIX_SOCKET_PATH, request.unix_socket.c_str());
    }
    if (!request.ca_file.empty()) {
      curl_easy_setopt(curl, CURLOPT_CAINFO, request.ca_file.c_str());
    }
    curl_easy_setopt(curl, CURLOPT_FOLLOWLOCATION, request.follow_redirects ? 1L : 0L);
    curl_easy_setopt(curl, CURLOPT_MAXREDIRS, 10L);
    // Credentials set in request.headers are never sent to a host a redirect leads to.
    curl_easy_setopt(curl, CURLOPT_UNRESTRICTED_AUTH, 0L);
    curl_easy_setopt(curl, CURLOPT_CONNECTTIMEOUT_MS, request.connect_timeout_ms);
    curl_easy_setopt(curl, CURLOPT_LOW_SPEED_LIMIT, 1L);
    curl_easy_setopt(curl, CURLOPT_LOW_SPEED_TIME, request.stall_timeout_s);
    curl_easy_setopt(curl, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(curl, CURLOPT_HEADERFUNCTION, &detail::on_header);
    curl_easy_setopt(curl, CURLOPT_HEADERDATA, &state);
    curl_easy_setopt(curl, CURLOPT_WRITEFUNCTION, &detail::on_body);
    curl_easy_setopt(curl, CURLOPT_WRITEDATA, &state);
    curl_easy_setopt(curl, CURLOPT_ERRORBUFFER, error_buffer_);
    error_buffer_[0] = '\0';

    const CURLcode result = curl_easy_perform(curl);
    if (state.sink_failure) {
      std::rethrow_exception(state.sink_failure);
    }
    if (state.body_too_large) {
      const auto reason = fmt::format("the answer is longer than {} bytes", request.max_body_size);
      throw transfer_error(fmt::format("{} {}: {}", request.method, request.url, reason),
                           CURLE_WRITE_ERROR, reason);
    }
    if (result != CURLE_OK) {
      const std::string detail = error_buffer_[0] != '\0' ? std::string(error_buffer_)
                                                          : curl_easy_strerror(result);
      throw transfer_error(fmt::format("{} {}: {}", request.method, request.url, detail), result,
                           detail);
    }

    curl_easy_getinfo(curl, CURLINFO_RESPONSE_CODE, &response.status);
    char* effective_url = nullptr;
    curl_easy_getinfo(curl, CURLINFO_EFFECTIVE_URL, &effective_url);
    if (effective_url != nullptr) {
      response.effective_url = effective_url;
    }
    return response;
  }

  std::unique_ptr<CURL, detail::curl_handle_deleter> handle_;
  char error_buffer_[CURL_ERROR_SIZE] = {};
};

} // namespace compactor::net
