// SHA-256 digests of blobs, and readers that check a blob's size and digest as it streams.
#pragma once

#include <fcntl.h>
#include <openssl/evp.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cerrno>
#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <memory>
#include <span>
#include <string>
#include <string_view>

#include <fmt/format.h>

#include <compactor/image/layer.hpp>
#include <compactor/image/reference.hpp>
#include <compactor/support/error.hpp>
#include <compactor/support/unique_fd.hpp>

namespace compactor::image {

// Content that does not match the size or digest its descriptor promised.
class verification_error : public compactor::error {
public:
  using compactor::error::error;
};

namespace detail {

struct evp_context_deleter {
  void operator()(EVP_MD_CTX* context) const noexcept { EVP_MD_CTX_free(context); }
};

} // namespace detail

// An incremental SHA-256 (OpenSSL EVP) that yields "sha256:<hex>".
class sha256 {
public:
  sha256() : context_(EVP_MD_CTX_new()) {
    if (!context_ || EVP_DigestInit_ex(context_.get(), EVP_sha256(), nullptr) != 1) {
      throw compactor::error("EVP_DigestInit_ex(sha256) failed");
    }
  }

  void update(std::span<const std::byte> bytes) {
    if (EVP_DigestUpdate(context_.get(), bytes.data(), bytes.size()) != 1) {
      throw compactor::error("EVP_DigestUpdate failed");
    }
    size_ += bytes.size();
  }

  void update(std::string_view text) { update(std::as_bytes(std::span(text))); }

  [[nodiscard]] std::uint64_t size() const noexcept { return size_; }

  // Finishes the hash; the object cannot be updated afterwards.
  std::string finish() {
    std::array<unsigned char, EVP_MAX_MD_SIZE> value{};
    unsigned int length = 0;
    if (EVP_DigestFinal_ex(context_.get(), value.data(), &length) != 1) {
      throw compactor::error("EVP_DigestFinal_ex failed");
    }
    std::string text = "sha256:";
    for (unsigned int i = 0; i < length; ++i) {
      text += fmt::format("{:02x}", value[i]);
    }
    return text;
  }

private:
  std::unique_ptr<EVP_MD_CTX, detail::evp_context_deleter> context_;
  std::uint64_t size_ = 0;
};

inline std::string sha256_of(std::string_view bytes) {
  sha256 hash;
  hash.update(bytes);
  return hash.finish();
}

// Only sha256 digests can be checked; a descriptor naming another algorithm is refused rather
// than trusted unchecked.
inline void require_sha256(std::string_view digest, std::string_view what) {
  if (!digest.starts_with("sha256:") || !is_valid_digest(digest)) {
    throw verification_error(fmt::format("{} has digest \"{}\", which is not a sha256 digest "
                                         "this program can check",
                                         what, digest));
  }
}

// The hex part of a digest, used as a file name.
inline std::string_view digest_hex(std::string_view digest) {
  return digest.substr(digest.find(':') + 1);
}

// Checks bytes held in memory (a manifest, a config) against their descriptor. A size of -1
// means the size is not known and only the digest is checked.
inline void verify_bytes(std::string_view bytes, std::string_view digest, std::int64_t size,
                         std::string_view what) {
  require_sha256(digest, what);
  if (size >= 0 && static_cast<std::uint64_t>(size) != bytes.size()) {
    throw verification_error(fmt::format("{} {} has {} bytes but its descriptor says {}", what,
                                         digest, bytes.size(), size));
  }
  if (const auto actual = sha256_of(bytes); actual != digest) {
    throw verification_error(
        fmt::format("{} does not match its digest: expected {}, got {}", what, digest, actual));
  }
}

// Wraps a reader so that it throws at the end of the stream (or as soon as it passes the
// expected size) when the blob is not exactly what the descriptor says. `size` -1: unknown.
inline byte_reader verifying_reader(byte_reader inner, std::string digest, std::int64_t size,
                                    std::string what) {
  require_sha256(digest, what);
  struct state {
    byte_reader inner;
    sha256 hash;
    std::string digest;
    std::int64_t size;
    std::string what;
    bool done = false;
  };
  auto shared = std::make_shared<state>(
      state{std::move(inner), sha256(), std::move(digest), size, std::move(what)});
  return [shared](std::span<std::byte> buffer) -> std::size_t {
    auto& s = *shared;
    if (s.done) {
      return 0;
    }
    const std::size_t count = s.inner(buffer);
    s.hash.update(buffer.first(count));
    if (s.size >= 0 && s.hash.size() > static_cast<std::uint64_t>(s.size)) {
      s.done = true;
      throw verification_error(fmt::format("{} {} is longer than the {} bytes its descriptor "
                                           "says",
                                           s.what, s.digest, s.size));
    }
    if (count == 0) {
      s.done = true;
      if (s.size >= 0 && s.hash.size() != static_cast<std::uint64_t>(s.size)) {
        throw verification_error(fmt::format("{} {} ended after {} bytes; its descriptor says "
                                             "{}",
                                             s.what, s.digest, s.hash.size(), s.size));
      }
      if (const auto actual = s.hash.finish(); actual != s.digest) {
        throw verification_error(fmt::format("{} does not match its digest: expected {}, got "
                                             "{}",
                                             s.what, s.digest, actual));
      }
    }
    return count;
  };
}

// Reads `length` bytes of a file from `offset` (the whole file from `offset` when -1).
inline byte_reader file_reader(const std::filesystem::path& path, std::uint64_t offset = 0,
                               std::int64_t length = -1) {
  auto fd = std::make_shared<unique_fd>(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
  if (!*fd) {
    throw_errno(fmt::format("open {}", path.string()));
  }
  ::posix_fadvise(fd->get(), static_cast<off_t>(offset), length < 0 ? 0 : length,
                  POSIX_FADV_SEQUENTIAL);
  auto position = std::make_shared<std::uint64_t>(offset);
  const std::uint64_t end = length < 0 ? UINT64_MAX : offset + static_cast<std::uint64_t>(length);
  return [fd, position, end, path](std::span<std::byte> buffer) -> std::size_t {
    const std::uint64_t want = std::min<std::uint64_t>(buffer.size(), end - *position);
    if (want == 0) {
      return 0;
    }
    while (true) {
      const ssize_t got = ::pread(fd->get(), buffer.data(), want, static_cast<off_t>(*position));
      if (got < 0 && errno == EINTR) {
        continue;
      }
      if (got < 0) {
        throw_errno(fmt::format("pread {}", path.string()));
      }
      *position += static_cast<std::uint64_t>(got);
      return static_cast<std::size_t>(got);
    }
  };
}

// Reads a whole stream into memory, refusing more than `limit` bytes.
inline std::string read_all(const byte_reader& reader, std::size_t limit, std::string_view what) {
  std::string text;
  std::array<std::byte, 65536> buffer{};
  while (const std::size_t count = reader(buffer)) {
    if (text.size() + count > limit) {
      throw compactor::error(fmt::format("{} is larger than {} bytes", what, limit));
    }
    text.append(reinterpret_cast<const char*>(buffer.data()), count);
  }
  return text;
}

} // namespace compactor::image
