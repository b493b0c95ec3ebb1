// Images held by a Docker daemon, through the Engine API over its unix socket:
// `docker-daemon:NAME[:TAG]`, and bare names when a daemon answers.
//
// GET /images/{name}/json tells whether the daemon has the image, its ID (the config digest)
// and its layers' diff IDs; POST /images/create pulls it when asked to; GET /images/get?names=
// exports it as a `docker save` tar, which is read once as it arrives: every blob goes into the
// blob cache under the digest computed on the way, and the image is then read from there.
// When the cache already holds the config and every layer, nothing is exported.
#pragma once

#include <cstdlib>
#include <filesystem>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include <compactor/image/blob_cache.hpp>
#include <compactor/image/detail/tar.hpp>
#include <compactor/image/detail/url.hpp>
#include <compactor/image/sources/docker_archive.hpp>
#include <compactor/net/http_client.hpp>

namespace compactor::image {

// One line of the progress stream of POST /images/create.
struct pull_progress {
  std::string id;     // a layer's short ID, or empty
  std::string status; // "Downloading", "Pull complete", ...
  std::uint64_t current = 0;
  std::uint64_t total = 0;
};

struct docker_daemon_options {
  std::string socket; // empty: DOCKER_HOST when it is unix://, else /var/run/docker.sock
  bool pull_if_missing = false;
  std::function<void(const pull_progress&)> on_progress;
};

// The daemon's socket: DOCKER_HOST when it names a unix socket, else the usual one.
inline std::string default_docker_socket() {
  if (const char* host = std::getenv("DOCKER_HOST"); host != nullptr && *host != '\0') {
    const std::string_view value(host);
    if (value.starts_with("unix://")) {
      return std::string(value.substr(7));
    }
    throw compactor::error(fmt::format("DOCKER_HOST={} is not a unix:// socket; only the "
                                       "daemon's unix socket is supported",
                                       value));
  }
  return "/var/run/docker.sock";
}

// True when a Docker daemon answers /_ping on `socket` within a second.
inline bool docker_daemon_answers(const std::string& socket) {
  if (!std::filesystem::exists(socket)) {
    return false;
  }
  try {
    net::http_client client;
    net::http_request request;
    request.url = "http://docker/_ping";
    request.unix_socket = socket;
    request.connect_timeout_ms = 1000;
    request.stall_timeout_s = 2;
    return client.perform(request).status == 200;
  } catch (const net::transfer_error&) {
    return false;
  }
}

namespace detail {

// The message of an Engine API error body ({"message": ...}), or the body itself.
inline std::string daemon_message(const net::http_response& response) {
  try {
    return nlohmann::json::parse(response.body).at("message").get<std::string>();
  } catch (const nlohmann::json::exception&) {
    return response.body;
  }
}

} // namespace detail

class docker_daemon_source {
public:
  // `name` is a reference, or an image ID "sha256:<hex>".
  docker_daemon_source(std::string name, std::shared_ptr<blob_cache> cache,
                       docker_daemon_options options = {})
      : name_(std::move(name)), cache_(std::move(cache)), options_(std::move(options)) {
    if (options_.socket.empty()) {
      options_.socket = default_docker_socket();
    }
  }

  [[nodiscard]] std::string describe() const { return "docker-daemon:" + name_; }

  // The daemon holds one platform's image under a name; `wanted` is checked against it and
  // asked for when pulling.
  resolved_image resolve(const platform& wanted) {
    auto inspected = inspect();
    if (!inspected) {
      if (!options_.pull_if_missing || name_.starts_with("sha256:")) {
        throw compactor::error(
            fmt::format("the Docker daemon at {} has no image {}", options_.socket, name_));
      }
      pull(wanted);
      inspected = inspect();
      if (!inspected) {
        throw compactor::error(
            fmt::format("the Docker daemon pulled {} but does not show it", name_));
      }
    }

    const auto config_digest = inspected->value("Id", std::string());
    std::vector<std::string> diff_ids;
    if (const auto rootfs = inspected->find("RootFS"); rootfs != inspected->end()) {
      diff_ids = rootfs->value("Layers", std::vector<std::string>());
    }
    require_sha256(config_digest, "the daemon's image ID");

    auto image = from_cache(config_digest, diff_ids);
    if (!image) {
      image = export_image();
    }
    if (image->config_digest != config_digest) {
      throw verification_error(fmt::format("the daemon exported image {} for {}, which it "
                                           "listed as {}",
                                           image->config_digest, name_, config_digest));
    }
    detail::check_platform(*image, wanted);
    image->manifest_digest = registry_digest(*inspected);
    return std::move(*image);
  }

private:
  net::http_request request(std::string path) const {
    net::http_request result;
    result.url = "http://docker" + path;
    result.unix_socket = options_.socket;
    return result;
  }

  // The manifest digest the image had in its registry (RepoDigests, "name@digest"), when the
  // daemon pulled it under the name asked for.
  std::string registry_digest(const nlohmann::json& inspected) const {
    if (name_.starts_with("sha256:")) {
      return {};
    }
    const auto wanted = parse_reference(name_);
    for (const auto& entry : inspected.value("RepoDigests", std::vector<std::string>())) {
      const auto at = entry.find('@');
      if (at != std::string::npos && parse_reference(entry.substr(0, at)).name() == wanted.name()) {
        return entry.substr(at + 1);
      }
    }
    return {};
  }

  // The image's inspect JSON, or nothing when the daemon does not have it.
  std::optional<nlohmann::json> inspect() {
    const auto response = client_.perform(request("/images/" + name_ + "/json"));
    if (response.status == 404) {
      return std::nullopt;
    }
    if (!response.ok()) {
      throw compactor::error(fmt::format("the Docker daemon could not inspect {}: {}", name_,
                                         detail::daemon_message(response)));
    }
    return nlohmann::json::parse(response.body);
  }

  // POST /images/create streams one JSON object per line; a failure arrives as a line with
  // "error" after a 200 status.
  void pull(const platform& wanted) {
    const auto ref = parse_reference(name_);
    auto pull_request = request(fmt::format("/images/create?fromImage={}&tag={}&platform={}",
                                            detail::percent_encode(ref.name()),
                                            detail::percent_encode(ref.manifest_reference()),
                                            detail::percent_encode(wanted.to_string())));
    pull_request.method = "POST";

    std::string pending;
    std::string failure;
    const auto handle_line = [&](std::string_view line) {
      if (line.find_first_not_of(" \r\t") == std::string_view::npos) {
        return;
      }
      const auto json = nlohmann::json::parse(line, nullptr, false);
      if (json.is_discarded() || !json.is_object()) {
        return;
      }
      if (json.contains("error")) {
        failure = json.value("error", std::string());
        return;
      }
      if (options_.on_progress) {
        pull_progress progress;
        progress.id = json.value("id", std::string());
        progress.status = json.value("status", std::string());
        if (const auto detail = json.find("progressDetail"); detail != json.end()) {
          progress.current = detail->value("current", std::uint64_t{0});
          progress.total = detail->value("total", std::uint64_t{0});
        }
        options_.on_progress(progress);
      }
    };
    const auto response = client_.perform(pull_request, [&](std::string_view chunk) {
      pending.append(chunk);
      for (auto end = pending.find('\n'); end != std::string::npos; end = pending.find('\n')) {
        handle_line(std::string_view(pending).substr(0, end));
        pending.erase(0, end + 1);
      }
    });
    handle_line(pending);
    if (!response.ok()) {
      failure = detail::daemon_message(response);
    }
    if (!failure.empty()) {
      throw compactor::error(
          fmt::format("the Docker daemon could not pull {}: {}", name_, failure));
    }
  }

  // The image straight from the cache when it holds the config and every layer.
  std::optional<resolved_image> from_cache(const std::string& config_digest,
                                           const std::vector<std::string>& diff_ids) {
    std::map<std::string, std::string> files;
    if (!cache_->find(config_digest)) {
      return std::nullopt;
    }
    // A manifest.json in the layout of Docker 25+, whose names are the digests.
    const auto name_of = [](const std::string& digest) {
      return "blobs/sha256/" + std::string(digest_hex(digest));
    };
    files[name_of(config_digest)] = config_digest;
    std::string manifest = fmt::format(R"([{{"Config":"{}","Layers":[)", name_of(config_digest));
    for (std::size_t i = 0; i < diff_ids.size(); ++i) {
      if (!cache_->find(diff_ids[i])) {
        return std::nullopt;
      }
      const auto name = name_of(diff_ids[i]);
      files[name] = diff_ids[i];
      manifest += fmt::format("{}\"{}\"", i == 0 ? "" : ",", name);
    }
    manifest += "]}]";
    return read_saved(manifest, files);
  }

  resolved_image export_image() {
    std::map<std::string, std::string> files; // name in the tar -> digest in the cache
    std::string manifest_json;
    std::optional<blob_writer> writer;
    std::string current;

    detail::tar_stream_parser parser(
        [&](const std::string& name, std::uint64_t) -> detail::tar_stream_parser::data_sink {
          if (name == "manifest.json") {
            return [&](std::string_view piece) {
              if (manifest_json.size() + piece.size() > detail::max_document_size) {
                throw format_error("the exported manifest.json is too large");
              }
              manifest_json.append(piece);
            };
          }
          const bool blob = name.ends_with("/layer.tar") || name.starts_with("blobs/") ||
                            (name.ends_with(".json") && name.find('/') == std::string::npos);
          if (!blob) {
            return nullptr;
          }
          writer.emplace(cache_->begin("exported " + name));
          current = name;
          return [&](std::string_view piece) {
            if (!piece.empty()) {
              writer->write(piece);
              return;
            }
            files[current] = writer->commit();
            writer.reset();
          };
        },
        "the daemon's export of " + name_);

    const auto response =
        client_.perform(request("/images/get?names=" + detail::percent_encode(name_)),
                        [&](std::string_view chunk) { parser.feed(chunk); });
    if (!response.ok()) {
      throw compactor::error(fmt::format("the Docker daemon could not export {}: {}", name_,
                                         detail::daemon_message(response)));
    }
    parser.finish();
    if (manifest_json.empty()) {
      throw format_error(fmt::format("the daemon's export of {} has no manifest.json", name_));
    }
    return read_saved(manifest_json, files);
  }

  resolved_image read_saved(const std::string& manifest_json,
                            const std::map<std::string, std::string>& files) {
    auto cache = cache_;
    const detail::saved_file_lookup lookup =
        [files, cache](const std::string& name) -> std::optional<detail::saved_file> {
      const auto it = files.find(name);
      if (it == files.end()) {
        return std::nullopt;
      }
      const auto path = cache->path_of(it->second);
      return detail::saved_file{[path] { return file_reader(path); },
                                std::filesystem::file_size(path)};
    };
    std::optional<reference> wanted;
    if (!name_.starts_with("sha256:")) {
      wanted = parse_reference(name_);
    }
    // The export of one image holds one entry; its RepoTags may not carry the name asked for
    // (an image pulled by digest has none), so the entry is taken as it is.
    auto image = detail::resolve_docker_save(manifest_json, std::nullopt, lookup, describe());
    if (wanted) {
      image.name = wanted->to_string();
    }
    return image;
  }

  std::string name_;
  std::shared_ptr<blob_cache> cache_;
  docker_daemon_options options_;
  net::http_client client_;
};

static_assert(image_source<docker_daemon_source>,
              "docker_daemon_source must satisfy the image_source concept.");

} // namespace compactor::image
