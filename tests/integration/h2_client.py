"""A frame-level HTTP/2 client for tests (Debian python3-hyperframe / python3-hpack): it sends exactly
the frames a test asks for, including ones a conforming client never would (abuse tests)."""
import socket
import ssl
import sys
import time

try:
    import hpack
    import hyperframe.frame as hf
except ImportError:  # Debian's packages under a non-Debian python3 (pyenv)
    sys.path.append("/usr/lib/python3/dist-packages")
    import hpack
    import hyperframe.frame as hf

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
ENHANCE_YOUR_CALM = 0xB
PROTOCOL_ERROR = 0x1


class RawH2:
    def __init__(self, port, tls_ctx=None, host="127.0.0.1", timeout=10.0, settings=None, source=None):
        s = socket.create_connection((host, port), timeout=timeout,
                                     source_address=(source, 0) if source else None)
        if tls_ctx is not None:
            s = tls_ctx.wrap_socket(s, server_hostname="localhost")
            if s.selected_alpn_protocol() != "h2":
                raise AssertionError(f"ALPN selected {s.selected_alpn_protocol()!r}, not h2")
        self.sock = s
        self.enc = hpack.Encoder()
        self.dec = hpack.Decoder()
        self.dec.max_allowed_table_size = 65536
        self.buf = b""
        self.goaway = None       # the GOAWAY frame once seen
        self.closed = False
        self.next_id = 1
        frame = hf.SettingsFrame(0, settings=settings or {})
        self.sock.sendall(PREFACE + frame.serialize())

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def send(self, *frames):
        return self.send_raw(b"".join(f.serialize() for f in frames))

    def send_raw(self, data):
        try:
            self.sock.sendall(data)
            return True
        except OSError:
            self.closed = True
            return False

    def new_stream(self):
        sid = self.next_id
        self.next_id += 2
        return sid

    def headers_frame(self, sid, headers, end_stream=True, end_headers=True):
        block = self.enc.encode(headers)
        flags = set()
        if end_stream:
            flags.add("END_STREAM")
        if end_headers:
            flags.add("END_HEADERS")
        return hf.HeadersFrame(sid, data=block, flags=flags)

    def request(self, path="/", authority="test.local", method="GET", extra=(), end_stream=True, scheme="http"):
        sid = self.new_stream()
        hdrs = [(":method", method), (":scheme", scheme), (":authority", authority), (":path", path)]
        hdrs += list(extra)
        self.send(self.headers_frame(sid, hdrs, end_stream=end_stream))
        return sid

    def data(self, sid, payload, end_stream=False):
        flags = {"END_STREAM"} if end_stream else set()
        return self.send(hf.DataFrame(sid, data=payload, flags=flags))

    def read_frame(self, deadline):
        while True:
            if len(self.buf) >= 9:
                frame, length = hf.Frame.parse_frame_header(memoryview(self.buf[:9]))
                if len(self.buf) >= 9 + length:
                    frame.parse_body(memoryview(self.buf[9:9 + length]))
                    self.buf = self.buf[9 + length:]
                    return frame
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("no frame in time")
            self.sock.settimeout(left)
            try:
                d = self.sock.recv(65536)
            except (ConnectionResetError, ssl.SSLError, OSError):
                d = b""
            if not d:
                self.closed = True
                return None
            self.buf += d

    def pump(self, until, timeout=10.0):
        """Reads frames (acking SETTINGS and PING) until until(frame) is true or the connection
        closes. Returns every frame read."""
        deadline = time.monotonic() + timeout
        seen = []
        while True:
            f = self.read_frame(deadline)
            if f is None:
                return seen
            seen.append(f)
            if isinstance(f, hf.HeadersFrame):  # HPACK state is per connection: decode every block
                f.fields = [(k.decode() if isinstance(k, bytes) else k, v.decode() if isinstance(v, bytes) else v)
                            for k, v in self.dec.decode(f.data, raw=False)]
            if isinstance(f, hf.SettingsFrame) and "ACK" not in f.flags:
                self.send(hf.SettingsFrame(0, flags={"ACK"}))
            if isinstance(f, hf.GoAwayFrame):
                self.goaway = f
            if until(f):
                return seen

    def response(self, sid, timeout=10.0):
        """(status, headers dict, body bytes, trailers dict, rst error code or None) of one stream;
        window updates are sent for the body read."""
        status, headers, trailers, body, rst = None, {}, {}, b"", None
        done = False

        def until(f):
            nonlocal status, headers, trailers, body, rst, done
            if getattr(f, "stream_id", 0) != sid:
                return False
            if isinstance(f, hf.HeadersFrame):
                fields = dict(f.fields)
                if status is None:
                    status = int(fields.pop(":status"))
                    headers = fields
                else:
                    trailers = fields
            elif isinstance(f, hf.DataFrame):
                body += f.data
                if f.flow_controlled_length:
                    self.send(hf.WindowUpdateFrame(0, window_increment=f.flow_controlled_length),
                              hf.WindowUpdateFrame(sid, window_increment=f.flow_controlled_length))
            elif isinstance(f, hf.RstStreamFrame):
                rst = f.error_code
                done = True
                return True
            if "END_STREAM" in getattr(f, "flags", ()):
                done = True
                return True
            return False

        self.pump(until, timeout)
        if not done and self.goaway is None and not self.closed:
            raise AssertionError(f"stream {sid} did not finish")
        return status, headers, body, trailers, rst

    def statuses(self, sids, timeout=15.0):
        """{sid: status or 'rst:<code>'} for several streams answered in any order."""
        want = set(sids)
        out = {}

        def until(f):
            sid = getattr(f, "stream_id", 0)
            if sid in want:
                if isinstance(f, hf.HeadersFrame) and sid not in out:
                    out[sid] = int(dict(f.fields)[":status"])
                elif isinstance(f, hf.RstStreamFrame):
                    out[sid] = f"rst:{f.error_code}"
                    want.discard(sid)
                elif isinstance(f, hf.DataFrame) and f.flow_controlled_length:
                    self.send(hf.WindowUpdateFrame(0, window_increment=f.flow_controlled_length))
                if "END_STREAM" in getattr(f, "flags", ()):
                    want.discard(sid)
            return not want

        self.pump(until, timeout)
        return out
