// libFuzzer target: what a registry or an image file hands us before anything is trusted.
// The input is tried as an image reference (with its transport prefix), a manifest, an index
// and a config. Malformed input must end in one of the library's errors, never a crash.
#include <cstddef>
#include <cstdint>
#include <string_view>

#include <compactor/image/config.hpp>
#include <compactor/image/manifest.hpp>
#include <compactor/image/reference.hpp>

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const std::string_view text(reinterpret_cast<const char*>(data), size);
  const auto attempt = [](auto&& parse) {
    try {
      parse();
    } catch (const compactor::error&) {
      // a refused input: what must happen to malformed data
    }
  };
  attempt([&] { static_cast<void>(compactor::image::parse_reference(text).to_string()); });
  attempt([&] { static_cast<void>(compactor::image::parse_location(text)); });
  attempt([&] { static_cast<void>(compactor::image::parse_manifest(text)); });
  attempt([&] { static_cast<void>(compactor::image::parse_index(text)); });
  attempt([&] { static_cast<void>(compactor::image::parse_config(text)); });
  return 0;
}
