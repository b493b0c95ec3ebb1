#include <catch2/catch.hpp>

#include <compactor/guest/launch_config.hpp>

using namespace compactor::guest;

TEST_CASE("launch config: a written configuration parses back to the same one", "[unit]") {
  launch_config config;
  config.entrypoint = {"/bin/sh", "-c"};
  config.cmd = {"echo \"quoted\"\nnext line", ""};
  config.env = {"PATH=/usr/bin:/bin", "EMPTY=", "UNICODE=\xc3\xa9t\xc3\xa9"};
  config.workdir = "/srv/app";
  config.user = "www:www";
  config.hostname = "web";

  const auto text = write_launch_config(config);
  CHECK(parse_launch_config(text) == config);
  CHECK(text.find("\"version\":1") != std::string::npos);
}

TEST_CASE("launch config: ENTRYPOINT comes before CMD in the argument vector", "[unit]") {
  launch_config config;
  config.entrypoint = {"/entry", "--flag"};
  config.cmd = {"arg"};
  CHECK(config.argv() == std::vector<std::string>{"/entry", "--flag", "arg"});

  config.entrypoint.clear();
  CHECK(config.argv() == std::vector<std::string>{"arg"});
}

TEST_CASE("launch config: missing members take their defaults, unknown ones are ignored",
          "[unit]") {
  const auto config = parse_launch_config(R"({"version": 1, "cmd": ["true"], "future": 3,
                                              "env": null})");
  CHECK(config.cmd == std::vector<std::string>{"true"});
  CHECK(config.entrypoint.empty());
  CHECK(config.env.empty());
  CHECK(config.user.empty());
  CHECK(config.hostname.empty());
}

TEST_CASE("launch config: malformed documents are refused with the reason", "[unit]") {
  using Catch::Contains;
  CHECK_THROWS_WITH(parse_launch_config("not json"), Contains("not a JSON object"));
  CHECK_THROWS_WITH(parse_launch_config("[1]"), Contains("not a JSON object"));
  CHECK_THROWS_WITH(parse_launch_config(R"({"cmd": []})"), Contains("version"));
  CHECK_THROWS_WITH(parse_launch_config(R"({"version": 2})"), Contains("version"));
  CHECK_THROWS_WITH(parse_launch_config(R"({"version": 1, "cmd": "true"})"),
                    Contains("\"cmd\" must be an array of strings"));
  CHECK_THROWS_WITH(parse_launch_config(R"({"version": 1, "env": ["A=1", 2]})"),
                    Contains("\"env\" must be an array of strings"));
  CHECK_THROWS_WITH(parse_launch_config(R"({"version": 1, "user": 0})"),
                    Contains("\"user\" must be a string"));
}

TEST_CASE("environment: user entries replace the image's in place and add new ones", "[unit]") {
  const auto merged = merge_environment({"PATH=/bin", "LANG=C", "A=image"},
                                        {"A=user", "NEW=1", "FROM_HOST", "PATHX=2"});
  CHECK(merged == std::vector<std::string>{"PATH=/bin", "LANG=C", "A=user", "NEW=1", "PATHX=2"});
}
