#include <catch2/catch.hpp>

#include <compactor/guest/user_database.hpp>

using namespace compactor::guest;

namespace {

const char* const passwd_text = "root:x:0:0:root:/root:/bin/sh\n"
                                "# a comment\n"
                                "\n"
                                "daemon:x:1:1::/usr/sbin:/usr/sbin/nologin\n"
                                "broken:x:notanumber:1::/:/bin/sh\n"
                                "app:x:1000:1000:App,,,:/home/app:/bin/sh\n"
                                "nohome:x:1001:1001::\n";

const char* const group_text = "root:x:0:\n"
                               "wheel:x:10:root,app\n"
                               "app:x:1000:\n"
                               "audio:x:29:other,app\n"
                               "users:x:100:other\n";

exec_user resolve(std::string_view spec) {
  return resolve_user(spec, parse_passwd(passwd_text), parse_group(group_text));
}

} // namespace

TEST_CASE("user database: comments and malformed lines are skipped", "[unit]") {
  const auto passwd = parse_passwd(passwd_text);
  REQUIRE(passwd.size() == 4);
  CHECK(passwd[2].name == "app");
  CHECK(passwd[2].home == "/home/app");
  const auto groups = parse_group(group_text);
  REQUIRE(groups.size() == 5);
  CHECK(groups[1].members == std::vector<std::string>{"root", "app"});
  CHECK(groups[2].members.empty());
}

TEST_CASE("user: empty is root with root's groups and home", "[unit]") {
  CHECK(resolve("") == exec_user{0, 0, {10}, "/root"});
}

TEST_CASE("user: a name gets its primary group, the groups listing it and its home",
          "[unit]") {
  CHECK(resolve("app") == exec_user{1000, 1000, {10, 29}, "/home/app"});
  CHECK(resolve("1000") == exec_user{1000, 1000, {10, 29}, "/home/app"});
}

TEST_CASE("user: an unknown uid runs with gid 0 and home /", "[unit]") {
  CHECK(resolve("4242") == exec_user{4242, 0, {}, "/"});
  CHECK(resolve("nohome") == exec_user{1001, 1001, {}, "/"});
}

TEST_CASE("user: an explicit group replaces the primary group and adds no others", "[unit]") {
  CHECK(resolve("app:audio") == exec_user{1000, 29, {}, "/home/app"});
  CHECK(resolve("app:5000") == exec_user{1000, 5000, {}, "/home/app"});
  CHECK(resolve("4242:4343") == exec_user{4242, 4343, {}, "/"});
}

TEST_CASE("user: unknown names are refused the way docker words it", "[unit]") {
  using Catch::Contains;
  CHECK_THROWS_WITH(resolve("nobody"), Contains("unable to find user nobody"));
  CHECK_THROWS_WITH(resolve("app:nogroup"), Contains("unable to find group nogroup"));
  CHECK_THROWS_WITH(resolve_user("app", {}, {}), Contains("no matching entries in passwd"));
}
