#include <catch2/catch.hpp>

#include <cstdlib>

#include "../../examples/cli/options.hpp"

using namespace compactor::commands;

TEST_CASE("--env: comma-separated assignments, commas inside values kept", "[unit]") {
  CHECK(parse_environment({"DEBUG=true,LOG_LEVEL=info"}) ==
        std::vector<std::string>{"DEBUG=true", "LOG_LEVEL=info"});
  CHECK(parse_environment({"LIST=a,b,c", "X=1"}) ==
        std::vector<std::string>{"LIST=a,b,c", "X=1"});
  CHECK(parse_environment({"URL=http://h/?a=1,B=2"}) ==
        std::vector<std::string>{"URL=http://h/?a=1", "B=2"});
  CHECK(parse_environment({"EMPTY="}) == std::vector<std::string>{"EMPTY="});
}

TEST_CASE("--env: a bare name takes the host's value or is left out", "[unit]") {
  ::setenv("COMPACTOR_TEST_FROM_HOST", "yes", 1);
  ::unsetenv("COMPACTOR_TEST_UNSET");
  CHECK(parse_environment({"COMPACTOR_TEST_FROM_HOST", "COMPACTOR_TEST_UNSET"}) ==
        std::vector<std::string>{"COMPACTOR_TEST_FROM_HOST=yes"});
}

TEST_CASE("--env: malformed entries are refused with the value named", "[unit]") {
  CHECK_THROWS_WITH(parse_environment({"=x"}), Catch::Contains("'=x'"));
  CHECK_THROWS_WITH(parse_environment({"1A=x"}), Catch::Contains("variable name"));
  CHECK_THROWS_WITH(parse_environment({""}), Catch::Contains("empty entry"));
}

TEST_CASE("--transfer-files: HOST:GUEST pairs, the guest path absolute", "[unit]") {
  CHECK(parse_transfers({"/tmp/data:/app/data,rel/f:/f"}) ==
        std::vector<transferred_file>{{"/tmp/data", "/app/data"}, {"rel/f", "/f"}});
  CHECK_THROWS_WITH(parse_transfers({"/tmp/data"}), Catch::Contains("HOST_PATH:GUEST_PATH"));
  CHECK_THROWS_WITH(parse_transfers({"/tmp/data:app"}), Catch::Contains("must be absolute"));
  CHECK_THROWS_WITH(parse_transfers({":/x"}), Catch::Contains("HOST_PATH:GUEST_PATH"));
}

TEST_CASE("--disk: a path with an optional :ro or :rw", "[unit]") {
  const auto plain = parse_disk("/d/a.img");
  CHECK(plain.path == "/d/a.img");
  CHECK_FALSE(plain.read_only);
  CHECK(parse_disk("/d/a.img:ro").read_only);
  CHECK(parse_disk("/d/a.img:ro").path == "/d/a.img");
  CHECK_FALSE(parse_disk("/d/a.img:rw").read_only);
  CHECK_THROWS(parse_disk(":ro"));
}
