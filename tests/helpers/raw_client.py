"""A raw VDE client (spec section 3) for tests that need a client running
under another uid (`setpriv --reuid=nobody ... python3 -c "$(cat this)" ...`).
The tests pass this file's text with `-c`, so it needs no read access to the
source tree.

Usage: raw_client.py CTL_DIR PORT DESCR ADDR [--bind] [--port0] [--symlink-to TARGET]

* ADDR is the client address named in the request. With --bind the client
  binds a datagram socket there first (its own socket); without it, the path
  is only named (e.g. somebody else's socket). `@NAME` stands for the
  abstract address NAME, padded with NULs to the whole 108-byte field.
* --port0: send REQ_NEW_PORT0 (the management port 0) instead of asking
  for PORT.
* --symlink-to TARGET: first create ADDR as a symlink to TARGET (made by
  this process, so owned by its uid).

Prints exactly one line: `REPLY <switch data socket path>`, `CLOSED`,
`NOREPLY` (no answer within 3 s) or `ERROR <text>`. After a reply it obeys
commands read from stdin, one per line, answering each with one line:
  send HEX    send a frame to the switch      -> `SENT` or `ERROR <text>`
  recv MS     wait up to MS ms for a frame    -> `FRAME HEX` or `TIMEOUT`
  quit (or EOF) close everything and exit
"""

import os
import socket
import struct
import sys

MAGIC = 0xFEEDFACE
VERSION = 3
AF_UNIX = 1


def sun_path(addr):
    """The 108-byte sun_path field for ADDR."""
    raw = b"\0" + addr[1:].encode() if addr.startswith("@") else addr.encode()
    if len(raw) >= 108:
        raise ValueError("address too long")
    return raw + b"\0" * (108 - len(raw))


def main():
    args = sys.argv[1:]
    ctl_dir, port, descr, addr = args[0], int(args[1]), args[2], args[3]
    bind = "--bind" in args
    request_type = 1 if "--port0" in args else port << 8
    if "--symlink-to" in args:
        os.symlink(args[args.index("--symlink-to") + 1], addr)
    data = None
    path_field = sun_path(addr)
    if bind:
        data = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        # An abstract name is bound with the whole field, as the switch
        # connects with the whole field.
        data.bind(path_field if addr.startswith("@") else addr)
    request = struct.pack("<IIIH", MAGIC, VERSION, request_type, AF_UNIX) + path_field + descr.encode()
    ctl = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        ctl.connect(os.path.join(ctl_dir, "ctl"))
        ctl.sendall(request)
        ctl.settimeout(3.0)
        try:
            reply = ctl.recv(256)
        except socket.timeout:
            print("NOREPLY", flush=True)
            return
        except ConnectionResetError:
            reply = b""
    except OSError as e:
        print(f"ERROR {e}", flush=True)
        return
    if not reply:
        print("CLOSED", flush=True)
        return
    switch_path = reply[2:].split(b"\0", 1)[0].decode()
    print(f"REPLY {switch_path}", flush=True)
    connect_error = None
    if data is not None:
        try:
            data.connect(switch_path)
        except OSError as e:
            # Reported on `send`: e.g. a data socket this user may not use.
            connect_error = e
    for line in sys.stdin:
        words = line.split()
        if not words or words[0] == "quit":
            break
        if data is None:
            print("ERROR no data socket", flush=True)
        elif words[0] == "send" and connect_error is not None:
            print(f"ERROR connect: {connect_error}", flush=True)
        elif words[0] == "send":
            try:
                data.send(bytes.fromhex(words[1]))
                print("SENT", flush=True)
            except OSError as e:
                print(f"ERROR {e}", flush=True)
        elif words[0] == "recv":
            data.settimeout(int(words[1]) / 1000.0)
            try:
                print(f"FRAME {data.recv(65536).hex()}", flush=True)
            except socket.timeout:
                print("TIMEOUT", flush=True)
    ctl.close()
    if data is not None:
        data.close()
        if not addr.startswith("@"):
            os.unlink(addr)


main()
