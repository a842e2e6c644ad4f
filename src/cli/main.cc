// The `marchproxy` binary: ingress | check | version.
#include <CLI/CLI.hpp>
#include <cstdio>

#include "common/base/log.h"
#include "ingress/ingress.h"

#ifndef MP_VERSION
#define MP_VERSION "dev"
#endif

int main(int argc, char** argv) {
  marchproxy::log::init();
  CLI::App app{"MarchProxy: ingress reverse proxy and egress forward proxy"};
  app.require_subcommand(1);
  std::string log_level = "info";
  app.add_option("--log-level", log_level, "trace|debug|info|warn|error|off");

  marchproxy::ingress::Options ingress_opts;
  auto* ingress = app.add_subcommand("ingress", "Run the ingress reverse proxy");
  ingress->add_option("-c,--config", ingress_opts.config_path, "YAML or JSON config file")->required();
  ingress->add_flag("!--no-watch", ingress_opts.watch, "Reload only on SIGHUP, not on file change");

  auto* version = app.add_subcommand("version", "Print the version");
  CLI11_PARSE(app, argc, argv);
  if (!marchproxy::log::setLevel(log_level)) {
    std::fprintf(stderr, "--log-level: unknown level \"%s\"\n", log_level.c_str());
    return 2;
  }
  if (*version) {
    std::printf("marchproxy %s\n", MP_VERSION);
    return 0;
  }
  if (*ingress) return marchproxy::ingress::run(ingress_opts);
  return 2;
}
