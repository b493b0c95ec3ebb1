// `docker save` archives: `docker-archive:PATH[:NAME[:TAG]]`.
//
// Both layouts Docker writes are read through their manifest.json ([{Config, RepoTags,
// Layers}]): the legacy one (<id>/layer.tar, <config-hex>.json) and the OCI layout of
// Docker 25+ (blobs/sha256/<hex>), which carries the same manifest.json. Layers in a legacy
// archive are uncompressed, so their digest is the config's diff_id.
#pragma once

#include <array>
#include <filesystem>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include <compactor/image/detail/tar.hpp>
#include <compactor/image/reference.hpp>
#include <compactor/image/source.hpp>

namespace compactor::image {

namespace detail {

// A file of a `docker save` tar, wherever it is kept.
struct saved_file {
  std::function<byte_reader()> open;
  std::uint64_t size = 0;
};

using saved_file_lookup = std::function<std::optional<saved_file>(const std::string& name)>;

// The digest a file name promises: "blobs/sha256/<hex>" or "<hex>.json".
inline std::string digest_from_name(std::string_view name) {
  auto base = name.substr(name.rfind('/') + 1);
  if (base.ends_with(".json")) {
    base.remove_suffix(5);
  }
  std::string digest = "sha256:" + std::string(base);
  return is_valid_digest(digest) ? digest : std::string();
}

// What the first bytes of a layer say its compression is.
inline std::string_view layer_type_from_magic(const saved_file& file) {
  std::array<std::byte, 4> magic{};
  const auto reader = file.open();
  std::size_t got = 0;
  while (got < magic.size()) {
    const auto count = reader(std::span(magic).subspan(got));
    if (count == 0) {
      break;
    }
    got += count;
  }
  const auto byte = [&](std::size_t i) { return std::to_integer<unsigned>(magic[i]); };
  if (got >= 2 && byte(0) == 0x1f && byte(1) == 0x8b) {
    return media_types::docker_layer_gzip;
  }
  if (got >= 4 && byte(0) == 0x28 && byte(1) == 0xb5 && byte(2) == 0x2f && byte(3) == 0xfd) {
    return media_types::oci_layer_zstd;
  }
  return media_types::docker_layer;
}

inline resolved_image resolve_docker_save(std::string_view manifest_json,
                                          const std::optional<reference>& wanted_name,
                                          const saved_file_lookup& lookup, std::string source) {
  nlohmann::json images;
  try {
    images = nlohmann::json::parse(manifest_json);
  } catch (const nlohmann::json::exception& failure) {
    throw format_error(
        fmt::format("manifest.json of {} is not valid JSON: {}", source, failure.what()));
  }
  if (!images.is_array() || images.empty()) {
    throw format_error(fmt::format("manifest.json of {} lists no image", source));
  }

  const nlohmann::json* chosen = nullptr;
  std::vector<std::string> names;
  for (const auto& entry : images) {
    for (const auto& tag : entry.value("RepoTags", nlohmann::json::array())) {
      if (!tag.is_string()) {
        continue;
      }
      names.push_back(tag.get<std::string>());
      if (wanted_name && chosen == nullptr &&
          parse_reference(names.back()).to_string() == wanted_name->to_string()) {
        chosen = &entry;
      }
    }
  }
  if (!wanted_name) {
    if (images.size() != 1) {
      throw format_error(fmt::format("{} holds {} images; name one with :NAME:TAG (names: {})",
                                     source, images.size(), fmt::join(names, ", ")));
    }
    chosen = &images.front();
  }
  if (chosen == nullptr) {
    throw format_error(
        fmt::format("{} has no image named {} (names: {})", source, wanted_name->familiar(),
                    names.empty() ? "none" : fmt::format("{}", fmt::join(names, ", "))));
  }

  const auto file = [&](const std::string& name) {
    auto found = lookup(name);
    if (!found) {
      throw format_error(fmt::format("{} lacks {}, which its manifest.json names", source, name));
    }
    return *found;
  };

  resolved_image image;
  image.source = std::move(source);
  if (wanted_name) {
    image.name = wanted_name->to_string();
  }

  const auto config_name = chosen->value("Config", std::string());
  image.config_digest = digest_from_name(config_name);
  if (image.config_digest.empty()) {
    throw format_error(fmt::format("the config file name \"{}\" in {} is not a digest", config_name,
                                   image.source));
  }
  const auto config_file = file(config_name);
  image.config_bytes = read_all(config_file.open(), max_document_size, "the image config");
  verify_bytes(image.config_bytes, image.config_digest, -1, "the image config");
  image.config = parse_config(image.config_bytes);
  image.platform_ = image.config.platform_;

  const auto layer_names = chosen->value("Layers", nlohmann::json::array());
  for (std::size_t i = 0; i < layer_names.size(); ++i) {
    const auto name = layer_names[i].get<std::string>();
    const auto found = file(name);
    layer item;
    item.media_type = std::string(layer_type_from_magic(found));
    item.size = found.size;
    if (i < image.config.diff_ids.size()) {
      item.diff_id = image.config.diff_ids[i];
    }
    item.digest = name.starts_with("blobs/") ? digest_from_name(name) : std::string();
    if (item.media_type == media_types::docker_layer) {
      if (!item.digest.empty() && item.digest != item.diff_id) {
        throw verification_error(fmt::format("layer {} of {} is {} but the config says its "
                                             "content is {}",
                                             i + 1, image.source, item.digest, item.diff_id));
      }
      item.digest = item.diff_id;
    } else if (item.digest.empty()) {
      throw format_error(fmt::format("layer {} of {} ({}) is compressed and its name is not a "
                                     "digest, so it cannot be verified",
                                     i + 1, image.source, name));
    }
    require_sha256(item.digest, fmt::format("layer {}", i + 1));
    item.open = [open = found.open, digest = item.digest, size = item.size, i] {
      return verifying_reader(open(), digest, static_cast<std::int64_t>(size),
                              fmt::format("layer {}", i + 1));
    };
    image.layers.push_back(std::move(item));
  }
  check_layer_count(image);
  return image;
}

} // namespace detail

class docker_archive_source {
public:
  explicit docker_archive_source(std::filesystem::path archive,
                                 std::optional<reference> name = std::nullopt)
      : archive_(std::move(archive)), name_(std::move(name)) {}

  [[nodiscard]] std::string describe() const {
    return "docker-archive:" + archive_.string() + (name_ ? ":" + name_->familiar() : "");
  }

  // A `docker save` archive holds one platform's image; `wanted` is checked against it.
  resolved_image resolve(const platform& wanted) {
    auto entries = std::make_shared<std::map<std::string, detail::tar_entry>>();
    for (auto& entry : detail::index_tar_file(archive_)) {
      entries->insert_or_assign(entry.name, entry);
    }
    const auto manifest = entries->find("manifest.json");
    if (manifest == entries->end()) {
      throw format_error(fmt::format("{} is not a `docker save` archive (it has no "
                                     "manifest.json)",
                                     archive_.string()));
    }
    const detail::saved_file_lookup lookup =
        [entries,
         archive = archive_](const std::string& name) -> std::optional<detail::saved_file> {
      const auto it = entries->find(detail::tar_clean_name(name));
      if (it == entries->end()) {
        return std::nullopt;
      }
      const auto entry = it->second;
      return detail::saved_file{[archive, entry] {
                                  return file_reader(archive, entry.offset,
                                                     static_cast<std::int64_t>(entry.size));
                                },
                                entry.size};
    };
    const auto manifest_json =
        read_all(file_reader(archive_, manifest->second.offset,
                             static_cast<std::int64_t>(manifest->second.size)),
                 detail::max_document_size, "manifest.json");
    auto image = detail::resolve_docker_save(manifest_json, name_, lookup, describe());
    detail::check_platform(image, wanted);
    return image;
  }

private:
  std::filesystem::path archive_;
  std::optional<reference> name_;
};

static_assert(image_source<docker_archive_source>,
              "docker_archive_source must satisfy the image_source concept.");

} // namespace compactor::image
