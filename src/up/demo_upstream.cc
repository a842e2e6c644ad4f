// `marchproxy demo-upstream`: the HTTP backend `marchproxy up` routes its demo cluster to.
#include <boost/asio/ip/tcp.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>
#include <cstdio>
#include <thread>

#include "up/up.h"

namespace marchproxy::up {
namespace {
namespace beast = boost::beast;
namespace bhttp = boost::beast::http;
using tcp = boost::asio::ip::tcp;

void serve(tcp::socket sock, std::string name) {
  beast::flat_buffer buf;
  beast::error_code ec;
  while (true) {
    bhttp::request<bhttp::string_body> req;
    bhttp::read(sock, buf, req, ec);
    if (ec) return;
    bhttp::response<bhttp::string_body> res(bhttp::status::ok, req.version());
    res.set(bhttp::field::content_type, "text/plain; charset=utf-8");
    res.set(bhttp::field::server, "marchproxy-demo-upstream");
    res.body() = "hello from " + name + " (" + std::string(req.method_string()) + " " + std::string(req.target()) + ")\n";
    res.keep_alive(req.keep_alive());
    res.prepare_payload();
    bhttp::write(sock, res, ec);
    if (ec || !req.keep_alive()) return;
  }
}

}  // namespace

int runDemoUpstream(const std::string& listen, const std::string& name) {
  auto colon = listen.rfind(':');
  if (colon == std::string::npos) {
    std::fprintf(stderr, "demo-upstream: --listen: expected HOST:PORT, got \"%s\"\n", listen.c_str());
    return 2;
  }
  std::string host = listen.substr(0, colon);
  if (host.size() > 1 && host.front() == '[') host = host.substr(1, host.size() - 2);
  try {
    boost::asio::io_context ioc;
    tcp::endpoint ep(boost::asio::ip::make_address(host), static_cast<unsigned short>(std::stoi(listen.substr(colon + 1))));
    tcp::acceptor acceptor(ioc);
    acceptor.open(ep.protocol());
    acceptor.set_option(tcp::acceptor::reuse_address(true));
    acceptor.bind(ep);
    acceptor.listen();
    std::printf("demo-upstream %s listening on %s\n", name.c_str(), listen.c_str());
    std::fflush(stdout);
    while (true) {
      tcp::socket sock(ioc);
      acceptor.accept(sock);
      std::thread(serve, std::move(sock), name).detach();
    }
  } catch (const std::exception& e) {
    std::fprintf(stderr, "demo-upstream: %s: %s\n", listen.c_str(), e.what());
    return 1;
  }
}

}  // namespace marchproxy::up
