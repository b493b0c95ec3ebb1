// From a reference string to a verified image: picks the source from the transport prefix,
// and for a bare name the Docker daemon when one answers (pulling through it when it lacks
// the image) and the registry otherwise.
//
//   auto image = compactor::image::resolve("alpine:3.19");
//   // image.config, image.layers (bottom first), image.manifest_digest, ...
#pragma once

#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <variant>

#include <compactor/image/blob_cache.hpp>
#include <compactor/image/reference.hpp>
#include <compactor/image/source.hpp>
#include <compactor/image/sources/docker_archive.hpp>
#include <compactor/image/sources/docker_daemon.hpp>
#include <compactor/image/sources/oci_archive.hpp>
#include <compactor/image/sources/oci_layout.hpp>
#include <compactor/image/sources/registry.hpp>

namespace compactor::image {

struct resolve_options {
  platform wanted;           // linux/amd64 unless told otherwise
  std::string docker_socket; // empty: DOCKER_HOST or /var/run/docker.sock
  bool use_daemon = true;    // for bare names: try the daemon before the registry
  registry_options registry;
  std::filesystem::path cache; // empty: $XDG_CACHE_HOME/compactor or ~/.cache/compactor
  std::function<void(const pull_progress&)> on_pull_progress;
};

using any_source = std::variant<oci_layout_source, oci_archive_source, docker_archive_source,
                                docker_daemon_source, registry_source>;

// The source a location names. A bare reference asks the daemon (if `use_daemon` and it
// answers /_ping), else the registry.
inline any_source make_source(const location& where, const resolve_options& options = {}) {
  const auto cache = [&] {
    return std::make_shared<blob_cache>(options.cache.empty() ? blob_cache::default_root()
                                                              : options.cache);
  };
  const auto daemon = [&](bool pull_if_missing) {
    docker_daemon_options daemon_options;
    daemon_options.socket =
        options.docker_socket.empty() ? default_docker_socket() : options.docker_socket;
    daemon_options.on_progress = options.on_pull_progress;
    daemon_options.pull_if_missing = pull_if_missing;
    return daemon_options;
  };

  switch (where.kind) {
  case transport::oci_layout:
    return oci_layout_source(where.path, where.tag);
  case transport::oci_archive:
    return oci_archive_source(where.path, where.tag);
  case transport::docker_archive:
    return docker_archive_source(where.path,
                                 where.has_ref ? std::optional(where.ref) : std::nullopt);
  case transport::docker_daemon:
    return docker_daemon_source(where.has_ref ? where.ref.to_string() : where.image_id, cache(),
                                daemon(false));
  case transport::registry:
    return registry_source(where.ref, cache(), options.registry);
  case transport::automatic: {
    std::optional<docker_daemon_options> local;
    if (options.use_daemon) {
      try {
        local = daemon(true);
      } catch (const compactor::error&) {
        // DOCKER_HOST names a TCP daemon, which is not supported: use the registry.
      }
    }
    if (local && docker_daemon_answers(local->socket)) {
      return docker_daemon_source(where.ref.to_string(), cache(), *local);
    }
    return registry_source(where.ref, cache(), options.registry);
  }
  }
  throw compactor::error("unknown transport");
}

inline std::string describe(const any_source& source) {
  return std::visit([](const auto& s) { return s.describe(); }, source);
}

inline resolved_image resolve(any_source& source, const platform& wanted = {}) {
  return std::visit([&](auto& s) { return resolve_with(s, wanted); }, source);
}

// Parses `text` (a reference, or TRANSPORT:...) and resolves it to a verified image.
inline resolved_image resolve(std::string_view text, const resolve_options& options = {}) {
  auto source = make_source(parse_location(text), options);
  return resolve(source, options.wanted);
}

} // namespace compactor::image
