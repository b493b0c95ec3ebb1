// An OCI image layout directory (OCI image spec image-layout.md): `oci:DIR[:TAG]`.
#pragma once

#include <filesystem>
#include <string>

#include <fmt/format.h>

#include <compactor/image/source.hpp>

namespace compactor::image {

class oci_layout_source {
public:
  explicit oci_layout_source(std::filesystem::path directory, std::string tag = {})
      : directory_(std::move(directory)), tag_(std::move(tag)) {}

  [[nodiscard]] std::string describe() const {
    return "oci:" + directory_.string() + (tag_.empty() ? "" : ":" + tag_);
  }

  resolved_image resolve(const platform& wanted) {
    if (!std::filesystem::is_regular_file(directory_ / "oci-layout")) {
      throw format_error(fmt::format("{} is not an OCI image layout (it has no oci-layout file)",
                                     directory_.string()));
    }
    const auto index_json =
        read_all(file_reader(directory_ / "index.json"), detail::max_document_size, "index.json");
    const detail::blob_opener open = [directory = directory_](const std::string& digest) {
      const auto path = directory / "blobs" / "sha256" / std::string(digest_hex(digest));
      if (!std::filesystem::exists(path)) {
        throw format_error(
            fmt::format("the OCI layout {} lacks blob {}", directory.string(), digest));
      }
      return file_reader(path);
    };
    return detail::resolve_oci_layout(index_json, tag_, wanted, open, describe());
  }

private:
  std::filesystem::path directory_;
  std::string tag_;
};

static_assert(image_source<oci_layout_source>,
              "oci_layout_source must satisfy the image_source concept.");

} // namespace compactor::image
