// `compactor inspect REF`: resolves an image and prints its reference, manifest, platform,
// config essentials and layers, as text or (--json) as one JSON object.
#pragma once

#include <string>

#include <CLI/CLI.hpp>
#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include <compactor/image/resolve.hpp>

#include "image_options.hpp"

namespace compactor::commands {

struct inspect_command {
  CLI::App* app = nullptr;
  std::string reference;
  image_options source;
  bool json = false;

  CLI::App* operator->() const { return app; }

  static nlohmann::ordered_json to_json(const image::resolved_image& image) {
    nlohmann::ordered_json layers = nlohmann::ordered_json::array();
    for (const auto& layer : image.layers) {
      layers.push_back({{"digest", layer.digest},
                        {"size", layer.size},
                        {"mediaType", layer.media_type},
                        {"diffID", layer.diff_id}});
    }
    const auto& config = image.config;
    return {
        {"reference", image.name},
        {"source", image.source},
        {"manifest", {{"digest", image.manifest_digest}, {"mediaType", image.manifest_media_type}}},
        {"platform", image.platform_.to_string()},
        {"config",
         {{"digest", image.config_digest},
          {"entrypoint", config.entrypoint},
          {"cmd", config.cmd},
          {"env", config.env},
          {"workingDir", config.working_dir},
          {"user", config.user},
          {"exposedPorts", config.exposed_ports},
          {"volumes", config.volumes},
          {"stopSignal", config.stop_signal},
          {"labels", config.labels}}},
        {"layers", layers}};
  }

  static void print_text(const image::resolved_image& image) {
    const auto& config = image.config;
    const auto list = [](const std::vector<std::string>& items) {
      return nlohmann::json(items).dump();
    };
    fmt::print("reference:   {}\n", image.name.empty() ? "-" : image.name);
    fmt::print("source:      {}\n", image.source);
    if (!image.manifest_digest.empty()) {
      fmt::print("manifest:    {} ({})\n", image.manifest_digest, image.manifest_media_type);
    }
    fmt::print("platform:    {}\n", image.platform_.to_string());
    fmt::print("config:      {}\n", image.config_digest);
    fmt::print("entrypoint:  {}\n", list(config.entrypoint));
    fmt::print("cmd:         {}\n", list(config.cmd));
    fmt::print("env:         {}\n", list(config.env));
    fmt::print("working dir: {}\n", config.working_dir.empty() ? "/" : config.working_dir);
    fmt::print("user:        {}\n", config.user.empty() ? "root" : config.user);
    if (!config.exposed_ports.empty()) {
      fmt::print("ports:       {}\n", fmt::join(config.exposed_ports, " "));
    }
    fmt::print("layers:      {}\n", image.layers.size());
    for (std::size_t i = 0; i < image.layers.size(); ++i) {
      const auto& layer = image.layers[i];
      fmt::print("  {:>2}  {}  {:>12}  {}\n", i + 1, layer.digest, layer.size, layer.media_type);
    }
  }

  // Exit status 0; failures are thrown and reported by main.
  int run() const {
    const auto image = image::resolve(reference, source.resolve_options());
    if (json) {
      fmt::print("{}\n", to_json(image).dump(2));
    } else {
      print_text(image);
    }
    return 0;
  }
};

inline inspect_command add_inspect(CLI::App& app) {
  inspect_command command;
  command.app = app.add_subcommand(
      "inspect", "Show an image's manifest, platform, config and layers without unpacking it");
  command.app
      ->add_option("reference", command.reference,
                   "Image: NAME[:TAG][@DIGEST], docker://REF, docker-daemon:NAME, "
                   "docker-archive:PATH, oci:DIR[:TAG] or oci-archive:PATH[:TAG]")
      ->required();
  command.source.add_to(*command.app);
  command.app->add_flag("--json", command.json, "Print one JSON object");
  return command;
}

} // namespace compactor::commands
