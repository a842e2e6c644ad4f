#pragma once
// Reads the SNI (server_name) from the first bytes of a TLS connection: a ClientHello in one or
// more TLS records. Used on CONNECT/SOCKS tunnels whose mapping sets sni_check, to refuse domain
// fronting (a tunnel to an allowed host carrying TLS for another). No I/O, no allocation beyond
// the result; fuzzed with the SOCKS5 parsers.
#include <cstddef>
#include <string>
#include <string_view>

namespace marchproxy::egress {

enum class PeekResult {
  kIncomplete,  // read more (the ClientHello is not complete yet)
  kTls,         // a ClientHello; sni is its host_name ("" when the extension is absent)
  kNotTls,      // not a TLS handshake
};

// Looks at up to the first 16 KiB; a ClientHello longer than that is kNotTls.
PeekResult peekClientHello(std::string_view in, std::string& sni);

}  // namespace marchproxy::egress
