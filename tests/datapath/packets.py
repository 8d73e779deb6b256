"""Packet builders and parsers for the datapath tests (struct + socket only, no scapy).

Builders return whole Ethernet frames with valid checksums unless told otherwise; `parse` takes a
frame apart again and `checksums_ok` recomputes every checksum a frame carries.
"""

from __future__ import annotations

import socket
import struct
from dataclasses import dataclass

ETH_P_IP = 0x0800
ETH_P_ARP = 0x0806
ETH_P_IPV6 = 0x86DD
TCP, UDP, ICMP = 6, 17, 1
FIN, SYN, RST, PSH, ACK = 0x01, 0x02, 0x04, 0x08, 0x10
IP_MF = 0x2000
IP_DF = 0x4000

POD_MAC = bytes.fromhex("0a0000000001")
HOST_MAC = bytes.fromhex("0a0000000002")


def csum(data: bytes) -> int:
    """The Internet checksum (RFC 1071) of data."""
    if len(data) % 2:
        data += b"\0"
    total: int = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def _pseudo(src: str, dst: str, proto: int, length: int) -> bytes:
    """The IPv4 pseudo header of a transport checksum."""
    return socket.inet_aton(src) + socket.inet_aton(dst) + struct.pack("!BBH", 0, proto, length)


def eth(payload: bytes, ethertype: int = ETH_P_IP, dst: bytes = HOST_MAC, src: bytes = POD_MAC) -> bytes:
    """An Ethernet frame."""
    return dst + src + struct.pack("!H", ethertype) + payload


def ipv4(src: str, dst: str, proto: int, payload: bytes, *, ident: int = 1, frag: int = 0, ttl: int = 64,
         options: bytes = b"", tot_len: int | None = None, version: int = 4, ihl: int | None = None) -> bytes:
    """An IPv4 packet (header checksum valid); tot_len/version/ihl can be forced wrong."""
    hlen = 20 + len(options)
    first = (version << 4) | ((ihl if ihl is not None else hlen // 4) & 0xF)
    length = tot_len if tot_len is not None else hlen + len(payload)
    header = struct.pack("!BBHHHBBH4s4s", first, 0, length, ident, frag, ttl, proto, 0,
                         socket.inet_aton(src), socket.inet_aton(dst)) + options
    header = header[:10] + struct.pack("!H", csum(header)) + header[12:]
    return header + payload


def tcp_segment(src: str, dst: str, sport: int, dport: int, flags: int, *, seq: int = 1000, ack: int = 0,
                payload: bytes = b"", options: bytes = b"", window: int = 65535) -> bytes:
    """A TCP header + payload with a valid checksum for src -> dst."""
    doff = (20 + len(options)) // 4
    header = struct.pack("!HHIIBBHHH", sport, dport, seq, ack, doff << 4, flags, window, 0, 0) + options
    segment = header + payload
    check = csum(_pseudo(src, dst, TCP, len(segment)) + segment)
    return segment[:16] + struct.pack("!H", check) + segment[18:]


def udp_datagram(src: str, dst: str, sport: int, dport: int, payload: bytes = b"", *,
                 zero_csum: bool = False) -> bytes:
    """A UDP header + payload with a valid (or zero) checksum."""
    datagram = struct.pack("!HHHH", sport, dport, 8 + len(payload), 0) + payload
    if zero_csum:
        return datagram
    check = csum(_pseudo(src, dst, UDP, len(datagram)) + datagram) or 0xFFFF
    return datagram[:6] + struct.pack("!H", check) + datagram[8:]


def icmp_message(icmp_type: int, code: int, rest: bytes, body: bytes = b"") -> bytes:
    """An ICMP message (type, code, checksum, 4 bytes `rest`, body)."""
    msg = struct.pack("!BBH", icmp_type, code, 0) + rest + body
    return msg[:2] + struct.pack("!H", csum(msg)) + msg[4:]


def tcp(src: str, dst: str, sport: int, dport: int, flags: int = SYN, *, seq: int = 1000, ack: int = 0,
        payload: bytes = b"", options: bytes = b"", ident: int = 1, frag: int = 0) -> bytes:
    """A whole Ethernet/IPv4/TCP frame."""
    segment = tcp_segment(src, dst, sport, dport, flags, seq=seq, ack=ack, payload=payload, options=options)
    return eth(ipv4(src, dst, TCP, segment, ident=ident, frag=frag))


def udp(src: str, dst: str, sport: int, dport: int, payload: bytes = b"data", *, zero_csum: bool = False,
        ident: int = 1, frag: int = 0) -> bytes:
    """A whole Ethernet/IPv4/UDP frame."""
    return eth(ipv4(src, dst, UDP, udp_datagram(src, dst, sport, dport, payload, zero_csum=zero_csum),
                    ident=ident, frag=frag))


def icmp_echo(src: str, dst: str, ident: int = 7, seq: int = 1, reply: bool = False) -> bytes:
    """A whole ICMP echo request (or reply) frame."""
    message = icmp_message(0 if reply else 8, 0, struct.pack("!HH", ident, seq), b"ping")
    return eth(ipv4(src, dst, ICMP, message))


def icmp_error(src: str, dst: str, quoted_frame: bytes, icmp_type: int = 3, code: int = 3) -> bytes:
    """An ICMP error frame from src to dst quoting the IPv4 header + 8 bytes of `quoted_frame`."""
    quoted_ip = quoted_frame[14:]
    ihl = (quoted_ip[0] & 0xF) * 4
    return eth(ipv4(src, dst, ICMP, icmp_message(icmp_type, code, b"\0\0\0\0", quoted_ip[:ihl + 8])))


def fragments(frame: bytes, first_len: int) -> tuple[bytes, bytes]:
    """Split the IPv4 packet of a frame into two fragments; the first carries first_len payload bytes."""
    ip = frame[14:]
    ihl = (ip[0] & 0xF) * 4
    src, dst = socket.inet_ntoa(ip[12:16]), socket.inet_ntoa(ip[16:20])
    ident = struct.unpack("!H", ip[4:6])[0]
    payload = ip[ihl:]
    first = ipv4(src, dst, ip[9], payload[:first_len], ident=ident, frag=IP_MF)
    later = ipv4(src, dst, ip[9], payload[first_len:], ident=ident, frag=first_len // 8)
    return frame[:14] + first, frame[:14] + later


@dataclass(frozen=True)
class Packet:
    """The fields of a parsed Ethernet/IPv4 frame that the tests look at."""

    mac_dst: bytes
    mac_src: bytes
    ethertype: int
    src: str = ""
    dst: str = ""
    proto: int = 0
    tot_len: int = 0
    frag: int = 0
    sport: int = 0
    dport: int = 0
    tcp_flags: int = 0
    seq: int = 0
    ack: int = 0
    icmp_type: int = -1
    icmp_code: int = -1
    l4: bytes = b""  # transport header and payload


def parse(frame: bytes) -> Packet:
    """Take a frame apart (IPv4 TCP/UDP/ICMP in detail, other ethertypes only their L2 header)."""
    mac_dst, mac_src, ethertype = frame[:6], frame[6:12], struct.unpack("!H", frame[12:14])[0]
    if ethertype != ETH_P_IP:
        return Packet(mac_dst, mac_src, ethertype)
    ip = frame[14:]
    ihl = (ip[0] & 0xF) * 4
    tot_len, frag, proto = struct.unpack("!H", ip[2:4])[0], struct.unpack("!H", ip[6:8])[0], ip[9]
    l4 = ip[ihl:tot_len]
    fields: dict[str, object] = {}
    if frag & 0x1FFF == 0 and proto in (TCP, UDP):
        fields["sport"], fields["dport"] = struct.unpack("!HH", l4[:4])
    if frag & 0x1FFF == 0 and proto == TCP:
        fields["seq"], fields["ack"] = struct.unpack("!II", l4[4:12])
        fields["tcp_flags"] = l4[13]
    if frag & 0x1FFF == 0 and proto == ICMP:
        fields["icmp_type"], fields["icmp_code"] = l4[0], l4[1]
    return Packet(mac_dst, mac_src, ethertype, socket.inet_ntoa(ip[12:16]), socket.inet_ntoa(ip[16:20]),
                  proto, tot_len, frag, l4=l4, **fields)  # type: ignore[arg-type]


def checksums_ok(frame: bytes) -> bool:
    """Whether the IPv4 header checksum and the TCP/UDP/ICMP checksum of a frame are valid."""
    ip = frame[14:]
    ihl = (ip[0] & 0xF) * 4
    if csum(ip[:ihl]) != 0:
        return False
    pkt = parse(frame)
    if pkt.frag & 0x1FFF or pkt.frag & IP_MF:
        return True  # a fragment's transport checksum covers the whole datagram
    if pkt.proto == ICMP:
        return csum(pkt.l4) == 0
    if pkt.proto == UDP and pkt.l4[6:8] == b"\0\0":
        return True  # no checksum
    if pkt.proto in (TCP, UDP):
        return csum(_pseudo(pkt.src, pkt.dst, pkt.proto, len(pkt.l4)) + pkt.l4) == 0
    return True
