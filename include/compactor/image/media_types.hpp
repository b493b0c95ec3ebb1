// Media types of manifests, indexes, configs and layers (OCI image spec, media-types.md;
// Docker image manifest v2 schema 2).
#pragma once

#include <string_view>

namespace compactor::image::media_types {

inline constexpr std::string_view oci_manifest = "application/vnd.oci.image.manifest.v1+json";
inline constexpr std::string_view oci_index = "application/vnd.oci.image.index.v1+json";
inline constexpr std::string_view oci_config = "application/vnd.oci.image.config.v1+json";
inline constexpr std::string_view oci_layer = "application/vnd.oci.image.layer.v1.tar";
inline constexpr std::string_view oci_layer_gzip = "application/vnd.oci.image.layer.v1.tar+gzip";
inline constexpr std::string_view oci_layer_zstd = "application/vnd.oci.image.layer.v1.tar+zstd";

inline constexpr std::string_view docker_manifest =
    "application/vnd.docker.distribution.manifest.v2+json";
inline constexpr std::string_view docker_manifest_list =
    "application/vnd.docker.distribution.manifest.list.v2+json";
inline constexpr std::string_view docker_config = "application/vnd.docker.container.image.v1+json";
inline constexpr std::string_view docker_layer = "application/vnd.docker.image.rootfs.diff.tar";
inline constexpr std::string_view docker_layer_gzip =
    "application/vnd.docker.image.rootfs.diff.tar.gzip";

inline constexpr bool is_index(std::string_view type) {
  return type == oci_index || type == docker_manifest_list;
}

inline constexpr bool is_manifest(std::string_view type) {
  return type == oci_manifest || type == docker_manifest;
}

// Layer types this program can unpack: tar, gzip or zstd, including the "nondistributable"
// and "foreign" variants, whose content is the same.
inline constexpr bool is_layer(std::string_view type) {
  return type.starts_with("application/vnd.oci.image.layer.") ||
         type.starts_with("application/vnd.docker.image.rootfs.");
}

// The Accept header value a registry needs to return any of the four manifest kinds.
inline constexpr std::string_view manifest_accept =
    "application/vnd.oci.image.index.v1+json, "
    "application/vnd.docker.distribution.manifest.list.v2+json, "
    "application/vnd.oci.image.manifest.v1+json, "
    "application/vnd.docker.distribution.manifest.v2+json";

} // namespace compactor::image::media_types
