"""S5: many idle clients, each logged in with SCRAM-SHA-256, then the pooler's RSS per client.

A small asyncio client speaks just enough of the protocol: StartupMessage, the SCRAM exchange, and
waits for ReadyForQuery. The salted password is derived once per (salt, iterations), so the clients'
own PBKDF2 does not dominate. Every loop is bounded by count and time.
"""
import asyncio, base64, hashlib, hmac, os, struct

_salted = {}


def _msg(kind, body):
    return kind + struct.pack("!I", len(body) + 4) + body


async def _read(reader):
    head = await reader.readexactly(5)
    kind, length = head[:1], struct.unpack("!I", head[1:])[0]
    return kind, await reader.readexactly(length - 4)


async def login(port, user, password, db):
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    params = b"user\0" + user.encode() + b"\0database\0" + db.encode() + b"\0\0"
    body = struct.pack("!I", 196608) + params
    writer.write(struct.pack("!I", len(body) + 4) + body)
    nonce = base64.b64encode(os.urandom(18))
    first_bare = b"n=,r=" + nonce
    server_first = None
    while True:
        kind, body = await _read(reader)
        if kind == b"E":
            raise RuntimeError(body.decode(errors="replace"))
        if kind == b"R":
            code = struct.unpack("!I", body[:4])[0]
            if code == 10:
                mech = b"SCRAM-SHA-256"
                data = b"n,," + first_bare
                writer.write(_msg(b"p", mech + b"\0" + struct.pack("!I", len(data)) + data))
            elif code == 11:
                server_first = body[4:]
                attrs = dict(a.split(b"=", 1) for a in server_first.split(b","))
                key = (attrs[b"s"], int(attrs[b"i"]))
                if key not in _salted:
                    _salted[key] = hashlib.pbkdf2_hmac("sha256", password.encode(), base64.b64decode(attrs[b"s"]), key[1])
                salted = _salted[key]
                client_key = hmac.new(salted, b"Client Key", "sha256").digest()
                stored = hashlib.sha256(client_key).digest()
                without_proof = b"c=biws,r=" + attrs[b"r"]
                auth = first_bare + b"," + server_first + b"," + without_proof
                sig = hmac.new(stored, auth, "sha256").digest()
                proof = bytes(a ^ b for a, b in zip(client_key, sig))
                writer.write(_msg(b"p", without_proof + b",p=" + base64.b64encode(proof)))
        elif kind == b"Z":
            return reader, writer


async def hold(port, user, password, db, n, timeout):
    """Logs n clients in (at most 200 at a time) and returns them, still connected."""
    sem = asyncio.Semaphore(200)

    async def one():
        async with sem:
            return await login(port, user, password, db)

    return await asyncio.wait_for(asyncio.gather(*(one() for _ in range(n))), timeout)


def release(conns):
    for _, w in conns:
        try:
            w.write(_msg(b"X", b""))
            w.close()
        except Exception:
            pass
