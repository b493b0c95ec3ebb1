// Manifests and indexes (OCI image spec manifest.md and image-index.md; Docker manifest v2
// schema 2 and manifest list), and the choice of one platform's manifest from an index.
#pragma once

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include <compactor/image/media_types.hpp>
#include <compactor/support/error.hpp>

namespace compactor::image {

// A manifest, index or config that is not what the specification says it must be.
class format_error : public compactor::error {
public:
  using compactor::error::error;
};

// os/architecture[/variant], e.g. "linux/amd64" or "linux/arm64/v8".
struct platform {
  std::string os = "linux";
  std::string architecture = "amd64";
  std::string variant;

  [[nodiscard]] std::string to_string() const {
    return os + "/" + architecture + (variant.empty() ? "" : "/" + variant);
  }

  friend bool operator==(const platform&, const platform&) = default;
};

inline platform parse_platform(std::string_view text) {
  platform result;
  result.variant.clear();
  const auto first = text.find('/');
  if (first == std::string_view::npos || first == 0 || first + 1 == text.size()) {
    throw format_error(fmt::format("invalid platform \"{}\": expected OS/ARCH[/VARIANT], e.g. "
                                   "linux/amd64",
                                   text));
  }
  result.os = std::string(text.substr(0, first));
  const auto rest = text.substr(first + 1);
  const auto second = rest.find('/');
  result.architecture = std::string(rest.substr(0, second));
  if (second != std::string_view::npos) {
    result.variant = std::string(rest.substr(second + 1));
  }
  if (result.architecture.empty() || (second != std::string_view::npos && result.variant.empty())) {
    throw format_error(fmt::format("invalid platform \"{}\": expected OS/ARCH[/VARIANT]", text));
  }
  return result;
}

struct descriptor {
  std::string media_type;
  std::string digest;
  std::int64_t size = -1;
  std::optional<platform> platform_;
  std::map<std::string, std::string> annotations;
};

struct manifest {
  std::string media_type;
  descriptor config;
  std::vector<descriptor> layers;
};

struct index {
  std::string media_type;
  std::vector<descriptor> manifests;
};

namespace detail {

inline std::string string_field(const nlohmann::json& object, const char* key) {
  const auto it = object.find(key);
  if (it == object.end() || it->is_null()) {
    return {};
  }
  if (!it->is_string()) {
    throw format_error(fmt::format("field \"{}\" is not a string", key));
  }
  return it->get<std::string>();
}

inline descriptor parse_descriptor(const nlohmann::json& json, std::string_view what) {
  if (!json.is_object()) {
    throw format_error(fmt::format("{} is not a JSON object", what));
  }
  descriptor result;
  result.media_type = string_field(json, "mediaType");
  result.digest = string_field(json, "digest");
  if (result.digest.empty()) {
    throw format_error(fmt::format("{} has no digest", what));
  }
  const auto size = json.find("size");
  if (size == json.end() || !size->is_number_integer() || size->get<std::int64_t>() < 0) {
    throw format_error(fmt::format("{} {} has no valid size", what, result.digest));
  }
  result.size = size->get<std::int64_t>();
  if (const auto p = json.find("platform"); p != json.end() && p->is_object()) {
    platform value;
    value.os = string_field(*p, "os");
    value.architecture = string_field(*p, "architecture");
    value.variant = string_field(*p, "variant");
    result.platform_ = value;
  }
  if (const auto a = json.find("annotations"); a != json.end() && a->is_object()) {
    for (const auto& [key, value] : a->items()) {
      if (value.is_string()) {
        result.annotations.emplace(key, value.get<std::string>());
      }
    }
  }
  return result;
}

inline nlohmann::json parse_json(std::string_view bytes, std::string_view what) {
  try {
    auto json = nlohmann::json::parse(bytes);
    if (!json.is_object()) {
      throw format_error(fmt::format("{} is not a JSON object", what));
    }
    return json;
  } catch (const nlohmann::json::exception& failure) {
    throw format_error(fmt::format("{} is not valid JSON: {}", what, failure.what()));
  }
}

// The media type of a manifest or index: the transport's (e.g. Content-Type) when it names
// one, else the document's own "mediaType", else guessed from its fields (OCI allows an
// index or manifest without mediaType).
inline std::string document_type(const nlohmann::json& json, std::string_view transport_type) {
  if (media_types::is_index(transport_type) || media_types::is_manifest(transport_type)) {
    return std::string(transport_type);
  }
  if (auto own = string_field(json, "mediaType"); !own.empty()) {
    return own;
  }
  if (json.contains("manifests")) {
    return std::string(media_types::oci_index);
  }
  if (json.contains("layers")) {
    return std::string(media_types::oci_manifest);
  }
  return {};
}

} // namespace detail

inline manifest parse_manifest(std::string_view bytes, std::string_view transport_type = {}) {
  const auto json = detail::parse_json(bytes, "the image manifest");
  manifest result;
  result.media_type = detail::document_type(json, transport_type);
  if (!media_types::is_manifest(result.media_type)) {
    throw format_error(fmt::format("unsupported manifest type \"{}\" (schema 1 manifests are not "
                                   "supported; expected an OCI or Docker schema 2 manifest)",
                                   result.media_type));
  }
  if (json.value("schemaVersion", 0) != 2) {
    throw format_error("the image manifest does not have schemaVersion 2");
  }
  result.config = detail::parse_descriptor(json.value("config", nlohmann::json()),
                                           "the manifest's config descriptor");
  const auto layers = json.find("layers");
  if (layers == json.end() || !layers->is_array()) {
    throw format_error("the image manifest has no layers array");
  }
  for (const auto& layer : *layers) {
    result.layers.push_back(detail::parse_descriptor(layer, "a layer descriptor"));
    if (!media_types::is_layer(result.layers.back().media_type)) {
      throw format_error(fmt::format("layer {} has media type \"{}\", which is not a tar layer",
                                     result.layers.back().digest, result.layers.back().media_type));
    }
  }
  return result;
}

inline index parse_index(std::string_view bytes, std::string_view transport_type = {}) {
  const auto json = detail::parse_json(bytes, "the image index");
  index result;
  result.media_type = detail::document_type(json, transport_type);
  const auto manifests = json.find("manifests");
  if (manifests == json.end() || !manifests->is_array()) {
    throw format_error("the image index has no manifests array");
  }
  for (const auto& entry : *manifests) {
    result.manifests.push_back(detail::parse_descriptor(entry, "an index entry"));
  }
  return result;
}

// True when the bytes are an index or manifest list rather than a manifest.
inline bool is_index_document(std::string_view bytes, std::string_view transport_type = {}) {
  return media_types::is_index(
      detail::document_type(detail::parse_json(bytes, "the manifest"), transport_type));
}

// Picks the manifest for `wanted` from an index. An entry without a platform matches only
// when it is the only manifest; a wanted platform without variant matches any variant.
inline const descriptor& select_manifest(const index& list, const platform& wanted) {
  const descriptor* only_manifest = nullptr;
  std::size_t manifest_count = 0;
  std::vector<std::string> offered;
  for (const auto& entry : list.manifests) {
    if (!media_types::is_manifest(entry.media_type) && !entry.media_type.empty()) {
      continue; // attestations and nested indexes
    }
    ++manifest_count;
    only_manifest = &entry;
    if (!entry.platform_) {
      continue;
    }
    offered.push_back(entry.platform_->to_string());
    const auto& p = *entry.platform_;
    if (p.os == wanted.os && p.architecture == wanted.architecture &&
        (wanted.variant.empty() || p.variant == wanted.variant)) {
      return entry;
    }
  }
  if (manifest_count == 1 && !only_manifest->platform_) {
    return *only_manifest;
  }
  throw format_error(
      fmt::format("the image has no manifest for platform {} (it offers: {})", wanted.to_string(),
                  offered.empty() ? "none" : fmt::format("{}", fmt::join(offered, ", "))));
}

} // namespace compactor::image
