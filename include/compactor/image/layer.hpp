// What an image source hands to the flattener: the image's layers as byte streams, bottom
// layer first, and the image configuration.
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <span>
#include <string>
#include <vector>

namespace compactor::image {

// Reads up to `buffer.size()` bytes into `buffer` and returns how many it read; 0 means the end
// of the stream. Failures (a dropped connection, a digest that does not match at the end of a
// blob) are thrown.
using byte_reader = std::function<std::size_t(std::span<std::byte> buffer)>;

// One layer blob: a tar stream, compressed with gzip or zstd or not at all.
struct layer {
  std::string digest;     // "sha256:<hex>" of the blob as stored
  std::string media_type; // as the manifest names it
  std::uint64_t size = 0; // of the blob as stored
  // Opens the blob from its start. The reader checks size and digest as it goes and throws at
  // the end when they do not match, so a consumer must commit its output only once every
  // reader it opened has reached its end.
  std::function<byte_reader()> open;
  // sha256 of the uncompressed tar (the config's rootfs.diff_ids entry); equal to `digest`
  // for an uncompressed layer.
  std::string diff_id;
};

} // namespace compactor::image
