// Test images built by the tests themselves from busybox-static: a few gzip tar layers in an
// OCI image layout, and helpers to run skopeo and read layers back.
#pragma once

#include <archive.h>
#include <archive_entry.h>
#include <sys/wait.h>
#include <unistd.h>

#include <array>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
#include <string>
#include <vector>

#include <catch2/catch.hpp>
#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include <compactor/image/digest.hpp>
#include <compactor/image/layer.hpp>
#include <compactor/image/media_types.hpp>

namespace compactor::testing {

namespace fs = std::filesystem;

// A directory removed at the end of the test.
class temporary_directory {
public:
  temporary_directory() {
    std::string pattern = (fs::temp_directory_path() / "compactor-image-XXXXXX").string();
    REQUIRE(::mkdtemp(pattern.data()) != nullptr);
    path_ = pattern;
  }
  temporary_directory(const temporary_directory&) = delete;
  temporary_directory& operator=(const temporary_directory&) = delete;
  ~temporary_directory() {
    std::error_code ignored;
    fs::remove_all(path_, ignored);
  }
  [[nodiscard]] const fs::path& path() const { return path_; }

private:
  fs::path path_;
};

inline std::string read_file(const fs::path& path) {
  std::ifstream stream(path, std::ios::binary);
  REQUIRE(stream);
  return {std::istreambuf_iterator<char>(stream), {}};
}

inline void write_file(const fs::path& path, std::string_view bytes) {
  fs::create_directories(path.parent_path());
  std::ofstream stream(path, std::ios::binary | std::ios::trunc);
  stream.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  REQUIRE(stream.good());
}

// Runs a shell command; returns its exit status and fills `output` with stdout and stderr.
inline int run_command(const std::string& command, std::string* output = nullptr) {
  FILE* pipe = ::popen((command + " 2>&1").c_str(), "r");
  REQUIRE(pipe != nullptr);
  std::string text;
  std::array<char, 4096> buffer{};
  while (const auto count = std::fread(buffer.data(), 1, buffer.size(), pipe)) {
    text.append(buffer.data(), count);
  }
  const int status = ::pclose(pipe);
  if (output != nullptr) {
    *output = text;
  }
  return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

inline void require_command(const std::string& command) {
  std::string output;
  const int status = run_command(command, &output);
  INFO(command << "\n" << output);
  REQUIRE(status == 0);
}

struct tar_file {
  std::string path;
  std::string content;        // for regular files
  std::string symlink_target; // a symlink when set
  unsigned mode = 0644;
};

// An uncompressed tar of `files` (fixed owners and times, so the bytes are reproducible).
inline std::string make_tar(const std::vector<tar_file>& files) {
  std::string out;
  archive* writer = archive_write_new();
  archive_write_set_format_pax_restricted(writer);
  archive_write_set_bytes_in_last_block(writer, 1);
  archive_write_open(
      writer, &out, nullptr,
      [](archive*, void* user, const void* data, size_t size) -> la_ssize_t {
        static_cast<std::string*>(user)->append(static_cast<const char*>(data), size);
        return static_cast<la_ssize_t>(size);
      },
      nullptr);
  for (const auto& file : files) {
    archive_entry* entry = archive_entry_new();
    archive_entry_set_pathname(entry, file.path.c_str());
    archive_entry_set_mtime(entry, 1'700'000'000, 0);
    archive_entry_set_uid(entry, 0);
    archive_entry_set_gid(entry, 0);
    if (!file.symlink_target.empty()) {
      archive_entry_set_filetype(entry, AE_IFLNK);
      archive_entry_set_perm(entry, 0777);
      archive_entry_set_symlink(entry, file.symlink_target.c_str());
      archive_entry_set_size(entry, 0);
    } else if (file.path.ends_with('/')) {
      archive_entry_set_filetype(entry, AE_IFDIR);
      archive_entry_set_perm(entry, 0755);
      archive_entry_set_size(entry, 0);
    } else {
      archive_entry_set_filetype(entry, AE_IFREG);
      archive_entry_set_perm(entry, file.mode);
      archive_entry_set_size(entry, static_cast<la_int64_t>(file.content.size()));
    }
    REQUIRE(archive_write_header(writer, entry) == ARCHIVE_OK);
    if (!file.content.empty()) {
      REQUIRE(archive_write_data(writer, file.content.data(), file.content.size()) ==
              static_cast<la_ssize_t>(file.content.size()));
    }
    archive_entry_free(entry);
  }
  REQUIRE(archive_write_close(writer) == ARCHIVE_OK);
  archive_write_free(writer);
  return out;
}

// gzip of `bytes` through libarchive's raw format.
inline std::string gzip(const std::string& bytes) {
  std::string out;
  archive* writer = archive_write_new();
  archive_write_add_filter_gzip(writer);
  // No time stamp in the gzip header, so that the same tar always gives the same blob.
  archive_write_set_filter_option(writer, "gzip", "timestamp", nullptr);
  archive_write_set_format_raw(writer);
  archive_write_set_bytes_in_last_block(writer, 1);
  archive_write_open(
      writer, &out, nullptr,
      [](archive*, void* user, const void* data, size_t size) -> la_ssize_t {
        static_cast<std::string*>(user)->append(static_cast<const char*>(data), size);
        return static_cast<la_ssize_t>(size);
      },
      nullptr);
  archive_entry* entry = archive_entry_new();
  archive_entry_set_filetype(entry, AE_IFREG);
  REQUIRE(archive_write_header(writer, entry) == ARCHIVE_OK);
  REQUIRE(archive_write_data(writer, bytes.data(), bytes.size()) ==
          static_cast<la_ssize_t>(bytes.size()));
  archive_entry_free(entry);
  REQUIRE(archive_write_close(writer) == ARCHIVE_OK);
  archive_write_free(writer);
  return out;
}

// The file paths (and symlink targets) in a tar stream, compressed or not.
inline std::map<std::string, std::string> list_tar(const std::string& bytes) {
  std::map<std::string, std::string> listing;
  archive* reader = archive_read_new();
  archive_read_support_filter_all(reader);
  archive_read_support_format_tar(reader);
  REQUIRE(archive_read_open_memory(reader, bytes.data(), bytes.size()) == ARCHIVE_OK);
  archive_entry* entry = nullptr;
  while (archive_read_next_header(reader, &entry) == ARCHIVE_OK) {
    const char* target = archive_entry_symlink(entry);
    listing[archive_entry_pathname(entry)] =
        target != nullptr ? std::string("-> ") + target
                          : fmt::format("{} bytes", archive_entry_size(entry));
  }
  archive_read_free(reader);
  return listing;
}

// The uncompressed tar inside a gzip layer.
inline std::string read_layer_uncompressed(const std::string& gzipped) {
  std::string out;
  archive* reader = archive_read_new();
  archive_read_support_filter_all(reader);
  archive_read_support_format_raw(reader);
  REQUIRE(archive_read_open_memory(reader, gzipped.data(), gzipped.size()) == ARCHIVE_OK);
  archive_entry* entry = nullptr;
  REQUIRE(archive_read_next_header(reader, &entry) == ARCHIVE_OK);
  char buffer[65536];
  la_ssize_t got = 0;
  while ((got = archive_read_data(reader, buffer, sizeof buffer)) > 0) {
    out.append(buffer, static_cast<std::size_t>(got));
  }
  REQUIRE(got == 0);
  archive_read_free(reader);
  return out;
}

// Reads a layer to its end through the reader the source gave (which checks its digest).
inline std::string read_layer(const image::layer& layer) {
  const auto reader = layer.open();
  std::string bytes;
  std::array<std::byte, 1 << 15> buffer{};
  while (const auto count = reader(buffer)) {
    bytes.append(reinterpret_cast<const char*>(buffer.data()), count);
  }
  return bytes;
}

struct blob {
  std::string media_type;
  std::string bytes;
  std::string digest;
};

inline blob make_blob(std::string media_type, std::string bytes) {
  auto digest = image::sha256_of(bytes);
  return {std::move(media_type), std::move(bytes), std::move(digest)};
}

inline nlohmann::json descriptor_json(const blob& b) {
  return {{"mediaType", b.media_type}, {"digest", b.digest}, {"size", b.bytes.size()}};
}

// An OCI layout holding busybox-static in three gzip layers, tagged `tag`.
struct test_image {
  fs::path directory;
  std::string tag;
  blob manifest;
  blob config;
  std::vector<blob> layers; // compressed
  std::vector<std::string> diff_ids;

  [[nodiscard]] std::string oci() const { return "oci:" + directory.string() + ":" + tag; }
};

inline void write_blob(const fs::path& directory, const blob& b) {
  write_file(directory / "blobs" / "sha256" / std::string(image::digest_hex(b.digest)), b.bytes);
}

inline blob make_config(const std::vector<std::string>& diff_ids,
                        const std::string& architecture = "amd64") {
  const nlohmann::json config = {
      {"architecture", architecture},
      {"os", "linux"},
      {"created", "2024-01-01T00:00:00Z"},
      {"config",
       {{"Entrypoint", {"/bin/sh", "-c"}},
        {"Cmd", {"echo hello from busybox"}},
        {"Env", {"PATH=/bin", "GREETING=hello"}},
        {"WorkingDir", "/home/user"},
        {"User", "1000:1000"},
        {"ExposedPorts", {{"8080/tcp", nlohmann::json::object()}}},
        {"Labels", {{"org.example.purpose", "compactor tests"}}}}},
      {"rootfs", {{"type", "layers"}, {"diff_ids", diff_ids}}},
  };
  return make_blob(std::string(image::media_types::oci_config), config.dump());
}

inline blob make_manifest(const blob& config, const std::vector<blob>& layers) {
  nlohmann::json manifest = {{"schemaVersion", 2},
                             {"mediaType", image::media_types::oci_manifest},
                             {"config", descriptor_json(config)},
                             {"layers", nlohmann::json::array()}};
  for (const auto& layer : layers) {
    manifest["layers"].push_back(descriptor_json(layer));
  }
  return make_blob(std::string(image::media_types::oci_manifest), manifest.dump());
}

inline void write_index(const fs::path& directory, const blob& target, const std::string& tag) {
  auto entry = descriptor_json(target);
  entry["annotations"] = {{"org.opencontainers.image.ref.name", tag}};
  const nlohmann::json index = {
      {"schemaVersion", 2}, {"mediaType", image::media_types::oci_index}, {"manifests", {entry}}};
  write_file(directory / "oci-layout", R"({"imageLayoutVersion":"1.0.0"})");
  write_file(directory / "index.json", index.dump());
}

inline test_image make_busybox_image(const fs::path& directory, const std::string& tag = "v1") {
  test_image image;
  image.directory = directory;
  image.tag = tag;

  const auto busybox = read_file("/bin/busybox");
  const std::vector<std::vector<tar_file>> contents = {
      {{"bin/", "", "", 0755},
       {"bin/busybox", busybox, "", 0755},
       {"bin/sh", "", "busybox", 0777},
       {"bin/ls", "", "busybox", 0777},
       {"bin/echo", "", "busybox", 0777}},
      {{"etc/", "", "", 0755},
       {"etc/passwd", "root:x:0:0:root:/root:/bin/sh\nuser:x:1000:1000::/home/user:/bin/sh\n", "",
        0644},
       {"etc/group", "root:x:0:\nuser:x:1000:\n", "", 0644}},
      {{"home/", "", "", 0755},
       {"home/user/", "", "", 0755},
       {"home/user/hello.txt", "hello from the top layer\n", "", 0644}},
  };
  for (const auto& files : contents) {
    const auto tar = make_tar(files);
    image.diff_ids.push_back(image::sha256_of(tar));
    image.layers.push_back(make_blob(std::string(image::media_types::oci_layer_gzip), gzip(tar)));
  }
  image.config = make_config(image.diff_ids);
  image.manifest = make_manifest(image.config, image.layers);

  for (const auto& layer : image.layers) {
    write_blob(directory, layer);
  }
  write_blob(directory, image.config);
  write_blob(directory, image.manifest);
  write_index(directory, image.manifest, tag);
  return image;
}

} // namespace compactor::testing
