// Just enough of the tar format (POSIX ustar, pax "path"/"size" records, GNU long names) to
// find the files of a `docker save` or OCI archive: an index of a seekable file, and a parser
// for a stream that arrives in pieces.
#pragma once

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cstdint>
#include <filesystem>
#include <functional>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include <fmt/format.h>

#include <compactor/support/error.hpp>
#include <compactor/support/unique_fd.hpp>

namespace compactor::image::detail {

inline constexpr std::size_t tar_block = 512;

struct tar_header {
  std::string name;
  std::uint64_t size = 0;
  char type = '0';
};

inline std::uint64_t tar_number(std::string_view field) {
  // Base-256 (GNU) when the high bit of the first byte is set, else octal text.
  if (!field.empty() && (static_cast<unsigned char>(field[0]) & 0x80U) != 0) {
    std::uint64_t value = static_cast<unsigned char>(field[0]) & 0x7fU;
    for (std::size_t i = 1; i < field.size(); ++i) {
      value = (value << 8U) | static_cast<unsigned char>(field[i]);
    }
    return value;
  }
  std::uint64_t value = 0;
  for (const char c : field) {
    if (c >= '0' && c <= '7') {
      value = value * 8 + static_cast<std::uint64_t>(c - '0');
    } else if (c != ' ' && c != '\0') {
      break;
    }
  }
  return value;
}

inline std::string tar_string(std::string_view field) {
  return std::string(field.substr(0, field.find('\0')));
}

// Cleans "./a//b" to "a/b".
inline std::string tar_clean_name(std::string name) {
  while (name.starts_with("./")) {
    name.erase(0, 2);
  }
  while (name.starts_with('/')) {
    name.erase(0, 1);
  }
  return name;
}

// Parses one 512-byte header; nothing for the zero block that ends the archive.
inline std::optional<tar_header> parse_tar_header(std::string_view block, std::string_view what) {
  if (std::ranges::all_of(block, [](char c) { return c == '\0'; })) {
    return std::nullopt;
  }
  std::uint64_t sum = 0;
  for (std::size_t i = 0; i < tar_block; ++i) {
    sum += (i >= 148 && i < 156) ? ' ' : static_cast<unsigned char>(block[i]);
  }
  if (sum != tar_number(block.substr(148, 8))) {
    throw compactor::error(fmt::format("{} is not a tar archive (bad header checksum)", what));
  }
  tar_header header;
  header.name = tar_string(block.substr(0, 100));
  if (block.substr(257, 5) == "ustar") {
    const auto prefix = tar_string(block.substr(345, 155));
    if (!prefix.empty()) {
      header.name = prefix + "/" + header.name;
    }
  }
  header.size = tar_number(block.substr(124, 12));
  header.type = block[156] == '\0' ? '0' : block[156];
  return header;
}

// Applies the "path" and "size" records of a pax extended header (POSIX pax format,
// "length keyword=value\n" records) to the next entry.
inline void apply_pax(std::string_view records, tar_header& next) {
  while (!records.empty()) {
    const auto space = records.find(' ');
    if (space == std::string_view::npos) {
      return;
    }
    const auto length =
        static_cast<std::size_t>(std::stoull(std::string(records.substr(0, space))));
    if (length <= space || length > records.size()) {
      return;
    }
    const auto record = records.substr(space + 1, length - space - 2);
    const auto equals = record.find('=');
    if (equals != std::string_view::npos) {
      const auto key = record.substr(0, equals);
      const auto value = record.substr(equals + 1);
      if (key == "path") {
        next.name = std::string(value);
      } else if (key == "size") {
        next.size = std::stoull(std::string(value));
      }
    }
    records.remove_prefix(length);
  }
}

inline std::uint64_t tar_padded(std::uint64_t size) {
  return (size + tar_block - 1) / tar_block * tar_block;
}

struct tar_entry {
  std::string name;
  std::uint64_t offset = 0; // of the file's data in the archive
  std::uint64_t size = 0;
};

// Lists the regular files of an uncompressed tar file, reading only the headers.
inline std::vector<tar_entry> index_tar_file(const std::filesystem::path& path) {
  const unique_fd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
  if (!fd) {
    throw_errno(fmt::format("open {}", path.string()));
  }
  const auto read_at = [&](std::uint64_t offset, std::size_t length) {
    std::string data(length, '\0');
    std::size_t done = 0;
    while (done < length) {
      const ssize_t got =
          ::pread(fd.get(), data.data() + done, length - done, static_cast<off_t>(offset + done));
      if (got < 0 && errno == EINTR) {
        continue;
      }
      if (got < 0) {
        throw_errno(fmt::format("pread {}", path.string()));
      }
      if (got == 0) {
        throw compactor::error(
            fmt::format("{} is truncated (a tar entry runs past the end)", path.string()));
      }
      done += static_cast<std::size_t>(got);
    }
    return data;
  };

  std::vector<tar_entry> entries;
  std::uint64_t offset = 0;
  std::optional<tar_header> extended; // from a pax 'x' or GNU 'L' entry, for the next one
  while (true) {
    auto header = parse_tar_header(read_at(offset, tar_block), path.string());
    if (!header) {
      return entries;
    }
    offset += tar_block;
    if (header->type == 'x' || header->type == 'L') {
      const auto data = read_at(offset, header->size);
      extended = tar_header{};
      extended->size = UINT64_MAX;
      if (header->type == 'x') {
        apply_pax(data, *extended);
      } else {
        extended->name = tar_string(data);
      }
    } else if (header->type == 'g') {
      // Global pax records (e.g. a comment) say nothing about file names.
    } else {
      if (extended) {
        if (!extended->name.empty()) {
          header->name = extended->name;
        }
        if (extended->size != UINT64_MAX) {
          header->size = extended->size;
        }
        extended.reset();
      }
      if (header->type == '0' || header->type == '7') {
        entries.push_back({tar_clean_name(header->name), offset, header->size});
      }
    }
    offset += tar_padded(header->size);
  }
}

// Parses a tar stream fed in pieces. For each regular file `on_file(name, size)` returns a
// sink for its data (or an empty function to skip it).
class tar_stream_parser {
public:
  using data_sink = std::function<void(std::string_view)>;
  using file_handler = std::function<data_sink(const std::string& name, std::uint64_t size)>;

  tar_stream_parser(file_handler on_file, std::string what)
      : on_file_(std::move(on_file)), what_(std::move(what)) {}

  void feed(std::string_view chunk) {
    while (!chunk.empty() && !ended_) {
      if (remaining_ == 0 && padding_ == 0) {
        const auto take = std::min(tar_block - block_.size(), chunk.size());
        block_.append(chunk.substr(0, take));
        chunk.remove_prefix(take);
        if (block_.size() == tar_block) {
          start_entry();
          block_.clear();
        }
        continue;
      }
      if (remaining_ > 0) {
        const auto take =
            static_cast<std::size_t>(std::min<std::uint64_t>(remaining_, chunk.size()));
        const auto piece = chunk.substr(0, take);
        if (collecting_) {
          collected_.append(piece);
        } else if (sink_) {
          sink_(piece);
        }
        chunk.remove_prefix(take);
        remaining_ -= take;
        if (remaining_ == 0) {
          finish_entry();
        }
        continue;
      }
      const auto take = static_cast<std::size_t>(std::min<std::uint64_t>(padding_, chunk.size()));
      chunk.remove_prefix(take);
      padding_ -= take;
    }
  }

  // Checks that the stream ended at an entry boundary.
  void finish() const {
    if (!ended_ && (remaining_ != 0 || !block_.empty())) {
      throw compactor::error(fmt::format("{} ended in the middle of a tar entry", what_));
    }
  }

private:
  void start_entry() {
    auto header = parse_tar_header(block_, what_);
    if (!header) {
      ended_ = true;
      return;
    }
    if (header->type != 'x' && header->type != 'L' && header->type != 'g' && extended_) {
      if (!extended_->name.empty()) {
        header->name = extended_->name;
      }
      if (extended_->size != UINT64_MAX) {
        header->size = extended_->size;
      }
      extended_.reset();
    }
    current_ = *header;
    remaining_ = header->size;
    padding_ = tar_padded(header->size) - header->size;
    collecting_ = header->type == 'x' || header->type == 'L';
    collected_.clear();
    sink_ = nullptr;
    if (header->type == '0' || header->type == '7') {
      sink_ = on_file_(tar_clean_name(header->name), header->size);
    }
    if (remaining_ == 0) {
      finish_entry();
    }
  }

  void finish_entry() {
    if (current_.type == 'x') {
      extended_ = tar_header{};
      extended_->size = UINT64_MAX;
      apply_pax(collected_, *extended_);
    } else if (current_.type == 'L') {
      extended_ = tar_header{};
      extended_->size = UINT64_MAX;
      extended_->name = tar_string(collected_);
    }
    if (sink_) {
      sink_(std::string_view()); // an empty piece marks the end of the file
    }
    sink_ = nullptr;
    collecting_ = false;
  }

  file_handler on_file_;
  std::string what_;
  std::string block_;
  tar_header current_;
  std::optional<tar_header> extended_;
  std::uint64_t remaining_ = 0;
  std::uint64_t padding_ = 0;
  bool collecting_ = false;
  std::string collected_;
  data_sink sink_;
  bool ended_ = false;
};

} // namespace compactor::image::detail
