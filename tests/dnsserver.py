# SPDX-License-Identifier: ISC
"""A small DNS server for tests: answers from a table on a loopback port, or misbehaves."""

import socket
import threading
import time

import dns.flags
import dns.message
import dns.rcode
import dns.rdatatype
import dns.rrset

# What a zone can be told to do instead of answering from the table.
# "drip": a truncated answer over UDP, then over TCP the full answer one
# byte every .drip seconds (a server that holds a client by its TCP read).
BEHAVIOURS = ("servfail", "refused", "silent", "garbage", "truncate", "wrongid", "drip")


class DNSServer:
    """Serve records {name: [(type, value), ...]} on a loopback address over UDP and TCP."""

    # behaviour maps a name or a zone (every name under it) to one of
    # BEHAVIOURS, to a number of seconds to wait before answering, or to a
    # function from the query packet to the reply packet.
    # Names not in the table get NXDOMAIN.  Every question asked is kept
    # in .questions as (name, type).

    def __init__(self, records=None, behaviour=None, delay=0.0, host="127.0.0.1", port=0, drip=0.8):
        self.drip = drip
        self.records = {k.lower().rstrip("."): v for k, v in (records or {}).items()}
        self.behaviour = {k.lower().rstrip("."): v for k, v in (behaviour or {}).items()}
        self.delay = delay
        self.questions = []
        self._stop = threading.Event()
        self.host = host
        for _ in range(20):
            self.udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            self.udp.bind((host, port))
            self.port = self.udp.getsockname()[1]
            self.tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            self.tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                self.tcp.bind((host, self.port))
                break
            except OSError:
                self.udp.close()
                self.tcp.close()
                if port:
                    raise
        self.tcp.listen(16)
        self.udp.settimeout(0.1)
        self.tcp.settimeout(0.1)
        self._threads = [
            threading.Thread(target=self._serve_udp, daemon=True),
            threading.Thread(target=self._serve_tcp, daemon=True),
        ]
        for thread in self._threads:
            thread.start()

    @property
    def address(self):
        """Return "HOST:PORT", the form $QTOOLS_RESOLVER takes."""
        return "%s:%d" % (self.host, self.port)

    def close(self):
        self._stop.set()
        for thread in self._threads:
            thread.join(2)
        self.udp.close()
        self.tcp.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def _rule(self, name):
        labels = name.split(".")
        for i in range(len(labels)):
            rule = self.behaviour.get(".".join(labels[i:]))
            if rule is not None:
                return rule
        return self.delay or None

    def answer(self, data, over_tcp=False):
        """Return (reply bytes or None, seconds to wait) for a query packet."""
        try:
            query = dns.message.from_wire(data)
        except Exception:
            return None, 0
        question = query.question[0]
        name = question.name.to_text(omit_final_dot=True).lower()
        rdtype = dns.rdatatype.to_text(question.rdtype)
        self.questions.append((name, rdtype))
        rule = self._rule(name)
        if callable(rule):
            return rule(data), 0
        wait = rule if isinstance(rule, (int, float)) else 0
        response = dns.message.make_response(query)
        response.flags |= dns.flags.AA
        if rule == "silent":
            return None, 0
        if rule == "garbage":
            return data[:2] + b"\x81\x80\xff\xff garbage", wait
        if rule == "wrongid":
            return bytes([data[0] ^ 0xFF, data[1]]) + response.to_wire()[2:], wait
        if rule in ("servfail", "refused"):
            response.set_rcode(dns.rcode.SERVFAIL if rule == "servfail" else dns.rcode.REFUSED)
            return response.to_wire(), wait
        if rule in ("truncate", "drip") and not over_tcp:
            response.flags |= dns.flags.TC
            return response.to_wire(), wait
        if rule == "drip":
            wait = -self.drip  # _handle_tcp: send one byte every drip seconds
        found = self.records.get(name)
        if found is None:
            response.set_rcode(dns.rcode.NXDOMAIN)
        else:
            values = [v for t, v in found if t == rdtype]
            if values:
                response.answer.append(
                    dns.rrset.from_text_list(name + ".", 60, "IN", rdtype, values)
                )
        return response.to_wire(), wait

    def _serve_udp(self):
        while not self._stop.is_set():
            try:
                data, peer = self.udp.recvfrom(65535)
            except socket.timeout:
                continue
            except OSError:
                return
            reply, wait = self.answer(data)
            if reply is None:
                continue
            if wait:
                # Answer later from another thread, so slow answers overlap.
                timer = threading.Timer(wait, self._send_udp, (reply, peer))
                timer.daemon = True
                timer.start()
            else:
                self._send_udp(reply, peer)

    def _send_udp(self, reply, peer):
        try:
            self.udp.sendto(reply, peer)
        except OSError:
            pass

    def _serve_tcp(self):
        while not self._stop.is_set():
            try:
                conn, _ = self.tcp.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            threading.Thread(target=self._handle_tcp, args=(conn,), daemon=True).start()

    def _handle_tcp(self, conn):
        with conn:
            conn.settimeout(5)
            try:
                data = b""
                while len(data) < 2 or len(data) < 2 + int.from_bytes(data[:2], "big"):
                    chunk = conn.recv(65537)
                    if not chunk:
                        return
                    data += chunk
                reply, wait = self.answer(data[2:], over_tcp=True)
                if reply is None:
                    return
                data = len(reply).to_bytes(2, "big") + reply
                if wait < 0:
                    for i in range(len(data)):
                        if self._stop.is_set():
                            return
                        conn.sendall(data[i : i + 1])
                        time.sleep(-wait)
                    return
                time.sleep(wait)
                conn.sendall(data)
            except OSError:
                pass


def main():
    """Run a server from the command line: dnsserver.py NAME=TYPE:VALUE... (for trying by hand)."""
    import sys

    records = {}
    for arg in sys.argv[1:]:
        name, _, rest = arg.partition("=")
        rdtype, _, value = rest.partition(":")
        records.setdefault(name, []).append((rdtype, value))
    server = DNSServer(records)
    print(server.address, flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        server.close()


if __name__ == "__main__":
    main()
