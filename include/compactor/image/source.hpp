// What every image source yields, and the concept a source policy satisfies.
//
// A source is a class with
//
//   resolved_image resolve(const platform& wanted);   // manifest, config and layers
//   std::string describe() const;                      // "oci:/path:tag", for messages
//
// Everything a source returns is verified: manifests and the config against their digests
// before they are parsed, layers while they stream (see layer.hpp).
#pragma once

#include <concepts>
#include <cstdint>
#include <functional>
#include <string>
#include <utility>
#include <vector>

#include <fmt/format.h>

#include <compactor/image/config.hpp>
#include <compactor/image/digest.hpp>
#include <compactor/image/layer.hpp>
#include <compactor/image/manifest.hpp>

namespace compactor::image {

struct resolved_image {
  std::string source;              // where it came from, e.g. "docker://docker.io/library/x:1"
  std::string name;                // the normalised reference when there is one
  std::string manifest_digest;     // empty for a legacy `docker save` archive, which has none
  std::string manifest_media_type; // likewise
  platform platform_;              // as the config states it
  std::string config_digest;
  std::string config_bytes; // the config JSON exactly as stored
  image::config config;
  std::vector<layer> layers; // bottom layer first
};

template <typename Source>
concept image_source = requires(Source& source, const Source& constant, const platform& wanted) {
  { source.resolve(wanted) } -> std::same_as<resolved_image>;
  { constant.describe() } -> std::convertible_to<std::string>;
};

// Resolves an image with any source policy.
template <typename Source>
resolved_image resolve_with(Source& source, const platform& wanted = {}) {
  static_assert(image_source<Source>,
                "An image source must offer `resolved_image resolve(const platform&)` and "
                "`std::string describe() const` (see compactor/image/source.hpp).");
  return source.resolve(wanted);
}

namespace detail {

// The largest manifest, index or config accepted, as a guard against a hostile server.
inline constexpr std::size_t max_document_size = 16 << 20;

// Opens a blob of a content-addressed store (an OCI layout, an archive, the cache) by digest.
using blob_opener = std::function<byte_reader(const std::string& digest)>;

inline std::string read_verified(const blob_opener& open, const descriptor& wanted,
                                 std::string_view what) {
  require_sha256(wanted.digest, what);
  if (wanted.size > static_cast<std::int64_t>(max_document_size)) {
    throw format_error(fmt::format("{} {} is {} bytes, more than a document may have", what,
                                   wanted.digest, wanted.size));
  }
  const auto bytes = read_all(open(wanted.digest), max_document_size, what);
  verify_bytes(bytes, wanted.digest, wanted.size, what);
  return bytes;
}

// Checks that the layers agree with the config's diff_ids in number.
inline void check_layer_count(const resolved_image& image) {
  if (image.config.diff_ids.size() != image.layers.size()) {
    throw format_error(fmt::format("the manifest lists {} layers but the config's rootfs lists "
                                   "{}",
                                   image.layers.size(), image.config.diff_ids.size()));
  }
}

// For sources that hold a single platform's image: refuses one built for another platform.
// An empty variant on either side matches any variant.
inline void check_platform(const resolved_image& image, const platform& wanted) {
  const auto& have = image.platform_;
  if (have.os != wanted.os || have.architecture != wanted.architecture ||
      (!wanted.variant.empty() && !have.variant.empty() && have.variant != wanted.variant)) {
    throw format_error(fmt::format("{} is an image for {}, not {}", image.source, have.to_string(),
                                   wanted.to_string()));
  }
}

// Fills config and layers from a manifest whose blobs `open` reads.
inline void load_manifest(resolved_image& image, const manifest& parsed, const blob_opener& open) {
  image.config_digest = parsed.config.digest;
  image.config_bytes = read_verified(open, parsed.config, "the image config");
  image.config = parse_config(image.config_bytes);
  image.platform_ = image.config.platform_;
  for (std::size_t i = 0; i < parsed.layers.size(); ++i) {
    const auto& entry = parsed.layers[i];
    require_sha256(entry.digest, "a layer");
    layer item;
    item.digest = entry.digest;
    item.media_type = entry.media_type;
    item.size = static_cast<std::uint64_t>(entry.size);
    item.open = [open, digest = entry.digest, size = entry.size, i] {
      return verifying_reader(open(digest), digest, size, fmt::format("layer {}", i + 1));
    };
    if (i < image.config.diff_ids.size()) {
      item.diff_id = image.config.diff_ids[i];
    }
    image.layers.push_back(std::move(item));
  }
  check_layer_count(image);
}

// Resolves an image from an OCI layout's index.json (OCI image spec image-layout.md): the
// entry whose org.opencontainers.image.ref.name is `tag` (or the only entry when `tag` is
// empty), through a nested index to the manifest for `wanted`.
inline resolved_image resolve_oci_layout(std::string_view index_json, const std::string& tag,
                                         const platform& wanted, const blob_opener& open,
                                         std::string source) {
  const auto top = parse_index(index_json, media_types::oci_index);
  const descriptor* chosen = nullptr;
  std::vector<std::string> names;
  for (const auto& entry : top.manifests) {
    const auto name = entry.annotations.find("org.opencontainers.image.ref.name");
    if (name != entry.annotations.end()) {
      names.push_back(name->second);
      if (!tag.empty() && (name->second == tag || name->second.ends_with(":" + tag))) {
        chosen = &entry;
        break;
      }
    }
  }
  if (tag.empty()) {
    if (top.manifests.size() != 1) {
      throw format_error(fmt::format("{} holds {} images; name one with :TAG (tags: {})", source,
                                     top.manifests.size(), fmt::join(names, ", ")));
    }
    chosen = &top.manifests.front();
  }
  if (chosen == nullptr) {
    throw format_error(
        fmt::format("{} has no image tagged \"{}\" (tags: {})", source, tag,
                    names.empty() ? "none" : fmt::format("{}", fmt::join(names, ", "))));
  }

  descriptor target = *chosen;
  for (int depth = 0; media_types::is_index(target.media_type); ++depth) {
    if (depth == 4) {
      throw format_error("image indexes are nested more than 4 deep");
    }
    const auto bytes = read_verified(open, target, "the image index");
    target = select_manifest(parse_index(bytes, target.media_type), wanted);
  }

  resolved_image image;
  image.source = std::move(source);
  image.manifest_digest = target.digest;
  const auto bytes = read_verified(open, target, "the image manifest");
  const auto parsed = parse_manifest(bytes, target.media_type);
  image.manifest_media_type = parsed.media_type;
  load_manifest(image, parsed, open);
  return image;
}

} // namespace detail

} // namespace compactor::image
