// A tar of an OCI image layout: `oci-archive:PATH[:TAG]`. Blobs are read in place from the
// uncompressed tar; nothing is unpacked.
#pragma once

#include <filesystem>
#include <map>
#include <memory>
#include <string>

#include <fmt/format.h>

#include <compactor/image/detail/tar.hpp>
#include <compactor/image/source.hpp>

namespace compactor::image {

class oci_archive_source {
public:
  explicit oci_archive_source(std::filesystem::path archive, std::string tag = {})
      : archive_(std::move(archive)), tag_(std::move(tag)) {}

  [[nodiscard]] std::string describe() const {
    return "oci-archive:" + archive_.string() + (tag_.empty() ? "" : ":" + tag_);
  }

  resolved_image resolve(const platform& wanted) {
    auto entries = std::make_shared<std::map<std::string, detail::tar_entry>>();
    for (auto& entry : detail::index_tar_file(archive_)) {
      entries->insert_or_assign(entry.name, entry);
    }
    const auto find = [entries, archive = archive_](const std::string& name) {
      const auto it = entries->find(name);
      if (it == entries->end()) {
        throw format_error(fmt::format("the OCI archive {} lacks {}", archive.string(), name));
      }
      return file_reader(archive, it->second.offset, static_cast<std::int64_t>(it->second.size));
    };
    if (!entries->contains("oci-layout")) {
      throw format_error(
          fmt::format("{} is not an OCI archive (it has no oci-layout file)", archive_.string()));
    }
    const auto index_json = read_all(find("index.json"), detail::max_document_size, "index.json");
    const detail::blob_opener open = [find](const std::string& digest) {
      return find("blobs/sha256/" + std::string(digest_hex(digest)));
    };
    return detail::resolve_oci_layout(index_json, tag_, wanted, open, describe());
  }

private:
  std::filesystem::path archive_;
  std::string tag_;
};

static_assert(image_source<oci_archive_source>,
              "oci_archive_source must satisfy the image_source concept.");

} // namespace compactor::image
