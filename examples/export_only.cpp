// An export-only tool: an image's file system as one cpio (newc, zstd) or tar, flattened from
// its layers in one pass, nothing else added.
//
//   export-only IMAGE OUTPUT [tar]
#include <cstdio>
#include <exception>
#include <string_view>

#include <compactor/archive/format.hpp>
#include <compactor/archive/output.hpp>
#include <compactor/archive/writer.hpp>
#include <compactor/flatten/flattener.hpp>
#include <compactor/image/resolve.hpp>

template <typename Format>
void write_image(const compactor::image::resolved_image& image, const char* path) {
  compactor::archive::atomic_output output(path);
  compactor::archive::writer<Format> writer(
      output.fd(), {.compression = {.method = compactor::archive::compression::zstd}});
  compactor::flatten::flatten(image.layers, writer);
  writer.finish();
  output.commit(); // only now, with every layer read and verified, does `path` appear
}

int main(int argc, char** argv) try {
  if (argc < 3) {
    std::fprintf(stderr, "usage: export-only IMAGE OUTPUT [tar]\n");
    return 1;
  }
  const auto image = compactor::image::resolve(argv[1]);
  if (argc > 3 && std::string_view(argv[3]) == "tar") {
    write_image<compactor::archive::tar_pax>(image, argv[2]);
  } else {
    write_image<compactor::archive::cpio_newc>(image, argv[2]);
  }
  return 0;
} catch (const std::exception& failure) {
  std::fprintf(stderr, "export-only: %s\n", failure.what());
  return 1;
}
