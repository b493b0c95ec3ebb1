// Images in a registry, through the OCI distribution API (OCI distribution spec, "Pulling
// manifests" and "Pulling blobs"): `docker://REF`, and bare names when no daemon answers.
//
// HTTPS with the system's CAs (plus a CA file if given); plain HTTP for loopback registries or
// when asked. Authentication follows the registry's WWW-Authenticate challenge: anonymous,
// Bearer tokens (Docker's token protocol) or Basic, with credentials from the `auths` of
// ~/.docker/config.json. Redirects (to blob storage) are followed by hand so that the
// registry's Authorization header never reaches another host. Transient failures (429, 5xx,
// dropped or stalled connections) are retried a few times with exponential backoff, or after
// the Retry-After the registry asks for (capped); a blob is then fetched again from its start.
// Content that does not match its digest is refused, not fetched again. Blobs land in the blob
// cache only once verified.
#pragma once

#include <algorithm>
#include <charconv>
#include <chrono>
#include <filesystem>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <system_error>
#include <thread>
#include <vector>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include <compactor/image/blob_cache.hpp>
#include <compactor/image/detail/url.hpp>
#include <compactor/image/reference.hpp>
#include <compactor/image/source.hpp>
#include <compactor/image/sources/registry_auth.hpp>
#include <compactor/net/http_client.hpp>

namespace compactor::image {

struct registry_options {
  std::string ca_file;            // a CA bundle trusted besides the system's
  bool plain_http = false;        // use http:// for every registry, not only loopback ones
  bool https_on_loopback = false; // use https:// for loopback registries too
  // Where `auths` are read; empty: $DOCKER_CONFIG/config.json or ~/.docker/config.json.
  std::filesystem::path docker_config;
  int attempts = 5;                             // tries of one request that fails transiently
  std::chrono::milliseconds first_backoff{200}; // the wait before the second try, then doubled
  std::chrono::seconds max_retry_after{10};     // a longer Retry-After is cut to this
  std::chrono::seconds stall_timeout{60};       // a transfer fails after this long without a byte
};

// The server part of an API URL: docker.io's API lives at registry-1.docker.io.
inline std::string registry_host(std::string_view domain) {
  return domain == "docker.io" ? "registry-1.docker.io" : std::string(domain);
}

inline bool is_loopback_domain(std::string_view domain) {
  const auto host = domain.starts_with('[') ? domain.substr(0, domain.find(']') + 1)
                                            : domain.substr(0, domain.find(':'));
  return host == "localhost" || host.starts_with("127.") || host == "[::1]";
}

namespace detail {

// The connection to one repository of one registry, shared by the layers it hands out.
class registry_session {
public:
  registry_session(reference ref, std::shared_ptr<blob_cache> cache, registry_options options)
      : ref_(std::move(ref)), cache_(std::move(cache)), options_(std::move(options)) {
    const bool plain =
        options_.plain_http || (is_loopback_domain(ref_.domain) && !options_.https_on_loopback);
    base_ = fmt::format("{}://{}/v2/{}", plain ? "http" : "https", registry_host(ref_.domain),
                        ref_.path);
    auto config = options_.docker_config.empty() ? default_docker_config() : options_.docker_config;
    if (!config.empty()) {
      credentials_ = find_registry_auth(config, ref_.domain);
    }
  }

  [[nodiscard]] const reference& ref() const noexcept { return ref_; }

  // GET a manifest by tag or digest; returns the body and its Content-Type.
  std::pair<std::string, std::string> get_manifest(const std::string& manifest_reference) {
    const std::lock_guard lock(mutex_);
    const auto response = get(
        base_ + "/manifests/" + manifest_reference,
        {"Accept: " + std::string(media_types::manifest_accept)}, nullptr, [] {},
        "manifest " + manifest_reference);
    if (response.status == 404) {
      throw compactor::error(
          fmt::format("the registry has no manifest {} for {}", manifest_reference, ref_.name()));
    }
    require_success(response, "manifest " + manifest_reference);
    auto type = response.header("Content-Type").value_or("");
    type = std::string(trim(std::string_view(type).substr(0, type.find(';'))));
    if (const auto digest = response.header("Docker-Content-Digest");
        digest && digest->starts_with("sha256:") && !manifest_reference.starts_with("sha256:")) {
      verify_bytes(response.body, *digest, -1, "the registry's manifest");
    }
    return {response.body, type};
  }

  // The blob's path in the cache, fetched first when the cache lacks it.
  std::filesystem::path ensure_blob(const std::string& digest, std::int64_t size,
                                    const std::string& what) {
    if (auto cached = cache_->find(digest, size)) {
      return *cached;
    }
    const std::lock_guard lock(mutex_);
    std::optional<blob_writer> writer;
    const net::body_sink sink = [&](std::string_view chunk) {
      // Refused as soon as it is longer than it may be, rather than once it fills the disk.
      if (size >= 0 && writer->size() + chunk.size() > static_cast<std::uint64_t>(size)) {
        throw verification_error(fmt::format("{} {} has more than the {} bytes its descriptor says",
                                             what, digest, size));
      }
      writer->write(chunk);
    };
    const auto response = get(
        base_ + "/blobs/" + digest, {}, &sink, [&] { writer.emplace(cache_->begin(what)); },
        what + " " + digest);
    if (response.status == 404) {
      throw compactor::error(fmt::format("the registry has no blob {} in {}", digest, ref_.name()));
    }
    require_success(response, what + " " + digest);
    return cache_->path_of(writer->commit(digest, size));
  }

private:
  void require_success(const net::http_response& response, const std::string& what) const {
    if (response.ok()) {
      return;
    }
    std::string detail = response.body.substr(0, 300);
    try {
      const auto json = nlohmann::json::parse(response.body);
      detail = json.at("errors").at(0).value("message", detail);
    } catch (const nlohmann::json::exception&) {
    }
    throw compactor::error(fmt::format("the registry answered {} for {} of {}: {}", response.status,
                                       what, ref_.name(), detail));
  }

  net::http_request make_request(const std::string& url) const {
    net::http_request request;
    request.url = url;
    request.ca_file = options_.ca_file;
    request.stall_timeout_s = static_cast<long>(options_.stall_timeout.count());
    // Manifests and error answers; blobs stream to the cache.
    request.max_body_size = max_document_size;
    return request;
  }

  static bool retryable(CURLcode code) {
    return code == CURLE_RECV_ERROR || code == CURLE_SEND_ERROR || code == CURLE_GOT_NOTHING ||
           code == CURLE_PARTIAL_FILE || code == CURLE_OPERATION_TIMEDOUT || code == CURLE_HTTP2 ||
           code == CURLE_HTTP2_STREAM;
  }

  // The wait before another try after a 429 or 5xx: the registry's Retry-After in seconds
  // (RFC 9110, 10.2.3; the HTTP-date form is not read), at most max_retry_after; else `backoff`.
  std::chrono::milliseconds retry_delay(const net::http_response& response,
                                        std::chrono::milliseconds backoff) const {
    const auto after = response.header("Retry-After").value_or("");
    long long seconds = 0;
    const auto [end, failure] = std::from_chars(after.data(), after.data() + after.size(), seconds);
    if (after.empty() || failure != std::errc() || end != after.data() + after.size() ||
        seconds < 0) {
      return backoff;
    }
    return std::chrono::seconds(std::min<long long>(seconds, options_.max_retry_after.count()));
  }

  // One GET with authentication, redirects and retries; `what` names the object in errors.
  // `restart` is called before each try, so that a sink can start its output afresh.
  net::http_response get(const std::string& url, const std::vector<std::string>& headers,
                         const net::body_sink* sink, const std::function<void()>& restart,
                         const std::string& what) {
    auto backoff = options_.first_backoff;
    bool authenticated_now = false;
    for (int attempt = 1;; ++attempt) {
      restart();
      net::http_response response;
      try {
        response = follow(url, headers, sink);
      } catch (const net::transfer_error& failure) {
        if (!retryable(failure.code())) {
          throw;
        }
        if (attempt >= options_.attempts) {
          throw net::transfer_error(fmt::format("could not fetch {} of {} after {} attempts: {}",
                                                what, ref_.name(), attempt, failure.reason()),
                                    failure.code(), failure.reason());
        }
        std::this_thread::sleep_for(backoff);
        backoff *= 2;
        continue;
      }
      if (response.status == 401 && !authenticated_now) {
        authenticate(response.header("WWW-Authenticate").value_or(""));
        authenticated_now = true;
        --attempt;
        continue;
      }
      if (response.status == 401) {
        throw compactor::error(fmt::format("the registry {} refused the credentials for {}{}",
                                           ref_.domain, ref_.path,
                                           credentials_ ? "" : " (none are configured)"));
      }
      if ((response.status == 429 || response.status >= 500) && attempt < options_.attempts) {
        std::this_thread::sleep_for(retry_delay(response, backoff));
        backoff *= 2;
        continue;
      }
      return response;
    }
  }

  // Follows up to 5 redirects; the Authorization header goes only to the registry itself.
  net::http_response follow(std::string url, const std::vector<std::string>& headers,
                            const net::body_sink* sink) {
    const auto registry_origin = url_origin(base_);
    for (int hop = 0; hop <= 5; ++hop) {
      auto request = make_request(url);
      request.headers = headers;
      if (!authorization_.empty() && url_origin(url) == registry_origin) {
        request.headers.push_back("Authorization: " + authorization_);
      }
      auto response = sink != nullptr ? client_.perform(request, *sink) : client_.perform(request);
      const auto location = response.header("Location");
      if (response.status < 300 || response.status >= 400 || !location) {
        return response;
      }
      url = resolve_location(url, *location);
    }
    throw compactor::error(fmt::format("the registry redirected {} more than 5 times", url));
  }

  // Answers a WWW-Authenticate challenge (Docker's token protocol for Bearer).
  void authenticate(const std::string& header) {
    const auto parsed = parse_challenge(header);
    if (parsed.scheme == "basic") {
      if (!credentials_) {
        throw compactor::error(fmt::format("the registry {} needs a user name and password; add "
                                           "them to the auths of ~/.docker/config.json (docker "
                                           "login)",
                                           ref_.domain));
      }
      authorization_ = "Basic " + *credentials_;
      return;
    }
    if (parsed.scheme != "bearer" || !parsed.params.contains("realm")) {
      throw compactor::error(fmt::format("the registry {} asks for authentication this program "
                                         "does not support (\"{}\")",
                                         ref_.domain, header));
    }
    std::string url = parsed.params.at("realm");
    std::string query;
    if (const auto it = parsed.params.find("service"); it != parsed.params.end()) {
      query += "service=" + percent_encode(it->second);
    }
    const auto scope = parsed.params.contains("scope")
                           ? parsed.params.at("scope")
                           : fmt::format("repository:{}:pull", ref_.path);
    query += (query.empty() ? "" : "&") + std::string("scope=") + percent_encode(scope);
    url += (url.find('?') == std::string::npos ? "?" : "&") + query;

    auto request = make_request(url);
    if (credentials_) {
      request.headers.push_back("Authorization: Basic " + *credentials_);
    }
    const auto response = client_.perform(request);
    if (!response.ok()) {
      throw compactor::error(fmt::format("the token service of {} answered {}{}", ref_.domain,
                                         response.status,
                                         credentials_ ? " for the configured credentials" : ""));
    }
    const auto json = nlohmann::json::parse(response.body, nullptr, false);
    std::string token;
    if (json.is_object()) {
      token = json.value("token", json.value("access_token", std::string()));
    }
    if (token.empty()) {
      throw compactor::error(fmt::format("the token service of {} sent no token", ref_.domain));
    }
    authorization_ = "Bearer " + token;
  }

  reference ref_;
  std::shared_ptr<blob_cache> cache_;
  registry_options options_;
  std::string base_; // scheme://host/v2/<path>
  std::optional<std::string> credentials_;
  std::string authorization_; // never logged
  net::http_client client_;
  std::mutex mutex_;
};

} // namespace detail

class registry_source {
public:
  registry_source(reference ref, std::shared_ptr<blob_cache> cache, registry_options options = {})
      : session_(std::make_shared<detail::registry_session>(std::move(ref), std::move(cache),
                                                            std::move(options))) {}

  [[nodiscard]] std::string describe() const { return "docker://" + session_->ref().to_string(); }

  // Layers are fetched into the cache when first opened, not here.
  resolved_image resolve(const platform& wanted) {
    const auto& ref = session_->ref();
    auto [bytes, type] = session_->get_manifest(ref.manifest_reference());
    std::string digest = sha256_of(bytes);
    if (!ref.digest.empty()) {
      verify_bytes(bytes, ref.digest, -1, "the registry's manifest");
    }
    if (is_index_document(bytes, type)) {
      const auto chosen = select_manifest(parse_index(bytes, type), wanted);
      std::tie(bytes, type) = session_->get_manifest(chosen.digest);
      verify_bytes(bytes, chosen.digest, chosen.size, "the registry's manifest");
      digest = chosen.digest;
    }

    resolved_image image;
    image.source = describe();
    image.name = ref.to_string();
    image.manifest_digest = digest;
    const auto parsed = parse_manifest(bytes, type);
    image.manifest_media_type = parsed.media_type;

    auto session = session_;
    session->ensure_blob(parsed.config.digest, parsed.config.size, "the image config");
    const detail::blob_opener open = [session](const std::string& blob) {
      return file_reader(session->ensure_blob(blob, -1, "blob"));
    };
    detail::load_manifest(image, parsed, open);
    // Layers: fetch into the cache with the descriptor's size when first opened.
    for (std::size_t i = 0; i < parsed.layers.size(); ++i) {
      auto& item = image.layers[i];
      item.open = [session, digest = item.digest, size = parsed.layers[i].size, i] {
        const auto what = fmt::format("layer {}", i + 1);
        return verifying_reader(file_reader(session->ensure_blob(digest, size, what)), digest, size,
                                what);
      };
    }
    return image;
  }

private:
  std::shared_ptr<detail::registry_session> session_;
};

static_assert(image_source<registry_source>,
              "registry_source must satisfy the image_source concept.");

} // namespace compactor::image
