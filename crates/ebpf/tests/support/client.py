"""Socket clients for the fast path's tests, run inside the test's cgroup.

tcp HOST PORT N       N HTTP/1.0 GETs, each on a new connection: prints
                      "<peer host> <peer port> <body>" per connection
                      (the peer as getpeername() gives it).
udp HOST PORT N       N datagrams from one unconnected socket: prints
                      "<from host> <from port> <reply>" per reply.
udp-connected HOST PORT N
                      the same from a connected socket, printing the
                      getpeername() address.
udp-hold HOST PORT 1
                      one exchange on a connected socket, printing the
                      getpeername() address and the reply; then waits
                      (up to 10 s) for another datagram and prints
                      "error <errno name>" when the socket fails.
An IPv6 HOST (e.g. ::ffff:10.96.0.10) uses an AF_INET6 socket.
"""
import socket
import sys

mode, host, port, count = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
family = socket.AF_INET6 if ":" in host else socket.AF_INET


def tcp():
    for _ in range(count):
        with socket.socket(family, socket.SOCK_STREAM) as s:
            s.settimeout(5)
            s.connect((host, port))
            peer = s.getpeername()
            s.sendall(b"GET / HTTP/1.0\r\nHost: svc\r\n\r\n")
            data = b""
            while chunk := s.recv(4096):
                data += chunk
            body = data.split(b"\r\n\r\n", 1)[1].decode().strip()
            print(peer[0], peer[1], body)


def udp(connected):
    with socket.socket(family, socket.SOCK_DGRAM) as s:
        s.settimeout(5)
        if connected:
            s.connect((host, port))
        for i in range(count):
            msg = f"m{i}".encode()
            if connected:
                s.send(msg)
                reply, peer = s.recv(2048), s.getpeername()
            else:
                s.sendto(msg, (host, port))
                reply, peer = s.recvfrom(2048)
            print(peer[0], peer[1], reply.decode())


def udp_hold():
    import errno
    with socket.socket(family, socket.SOCK_DGRAM) as s:
        s.settimeout(5)
        s.connect((host, port))
        s.send(b"m0")
        reply, peer = s.recv(2048), s.getpeername()
        print(peer[0], peer[1], reply.decode(), flush=True)
        s.settimeout(10)
        try:
            print("reply", s.recv(2048).decode(), flush=True)
        except OSError as e:
            print("error", errno.errorcode.get(e.errno, str(e)), flush=True)


{"udp-hold": udp_hold, "tcp": tcp, "udp": lambda: udp(False), "udp-connected": lambda: udp(True)}[mode]()
