// Options of the commands that resolve an image: where to find it and which platform.
#pragma once

#include <string>

#include <CLI/CLI.hpp>

#include <compactor/image/resolve.hpp>

namespace compactor::commands {

struct image_options {
  std::string platform = "linux/amd64";
  std::string docker_host;
  std::string ca_file;
  bool plain_http = false;
  bool no_daemon = false;

  void add_to(CLI::App& command) {
    command
        .add_option("--platform", platform,
                    "OS/ARCH[/VARIANT] to pick from a multi-platform image")
        ->capture_default_str();
    command.add_option("--docker-host", docker_host,
                       "Docker daemon socket (unix://PATH); default DOCKER_HOST or "
                       "/var/run/docker.sock");
    command.add_option("--ca-file", ca_file,
                       "CA bundle trusted for registries besides the system's");
    command.add_flag("--plain-http", plain_http,
                     "Talk HTTP, not HTTPS, to the registry (loopback registries always do)");
    command.add_flag("--no-daemon", no_daemon,
                     "For a bare name, go to the registry even when a daemon answers");
  }

  [[nodiscard]] image::resolve_options resolve_options() const {
    image::resolve_options options;
    options.wanted = image::parse_platform(platform);
    options.docker_socket =
        docker_host.starts_with("unix://") ? docker_host.substr(7) : docker_host;
    options.use_daemon = !no_daemon;
    options.registry.ca_file = ca_file;
    options.registry.plain_http = plain_http;
    return options;
  }
};

} // namespace compactor::commands
