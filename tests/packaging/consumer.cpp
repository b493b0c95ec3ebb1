// A program of another project that uses the installed library.
#include <compactor/host/virtualization.hpp>
#include <compactor/net/http_client.hpp>

int main() {
  const auto flags = compactor::host::parse_cpu_flags("flags : svm\n");
  compactor::net::http_client client;
  return flags.svm ? 0 : 1;
}
