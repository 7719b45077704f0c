"""The app the HTTP benchmark serves: one route per measured path, all on one SQLite file."""

from __future__ import annotations

import hashlib
import json
import os
import threading
import time

import peewee
from flask import Flask, Response, jsonify, request

from flask_cnerium import Cnerium, created

DATA_DIR = os.environ.get("BENCH_DIR", "/tmp/cnerium-bench")
db = peewee.SqliteDatabase(os.path.join(DATA_DIR, "app.db"), timeout=5,
                           pragmas={"journal_mode": "wal", "synchronous": "normal"})


class Item(peewee.Model):
    """The row each POST inserts."""

    name = peewee.CharField()

    class Meta:
        database = db


class HandRolledKey(peewee.Model):
    """(f)'s table: what a hand-rolled idempotency layer keeps per key."""

    key = peewee.CharField(unique=True)
    fingerprint = peewee.CharField()
    status = peewee.IntegerField()
    headers = peewee.TextField()
    body = peewee.BlobField()
    expires_at = peewee.DoubleField(index=True)

    class Meta:
        database = db


app = Flask(__name__)
app.config["CNERIUM_DATA_DIR"] = DATA_DIR
cnerium = Cnerium(app, database=db)
db.create_tables([Item, HandRolledKey], safe=True)
cnerium.start()


@app.get("/plain")
def plain_get():
    """(a) a plain GET returning JSON."""
    return jsonify(ok=True, service="bench")


@app.post("/echo")
def echo_post():
    """(e) a plain POST that parses the same JSON body as (d) and touches no database."""
    return jsonify(ok=True, name=request.get_json()["name"]), 201


@app.post("/plain")
def plain_post():
    """(b) a plain POST doing one insert."""
    with db.atomic():
        item = Item.create(name=request.get_json()["name"])
    return jsonify(ok=True, id=item.id), 201


@cnerium.durable_post("/durable", "items.create")
def durable_post(req):
    """(c)/(d) the same insert behind durable_post, sharing the database."""
    item = Item.create(name=req.json()["name"])
    return created({"ok": True, "id": item.id})


hand_rolled_lock = threading.Lock()


@app.post("/hand-rolled")
def hand_rolled():
    """(f) the same insert behind the idempotency a user writes by hand: one process lock, one
    transaction, a SHA-256 of the raw body; no canonical JSON, no lock across processes, no
    leases (a crash mid-handler is safe only because the transaction rolls back), no scopes,
    no signals, no held events."""
    key = request.headers["Idempotency-Key"]
    body = request.get_data()
    fingerprint = hashlib.sha256(body).hexdigest()
    with hand_rolled_lock, db.atomic(lock_type="IMMEDIATE"):
        row = db.execute_sql("SELECT fingerprint, status, headers, body FROM handrolledkey "
                             "WHERE key = ?", (key,)).fetchone()
        if row is not None:
            if row[0] != fingerprint:
                return jsonify(error="key reused"), 409
            return Response(row[3], status=row[1], headers=json.loads(row[2]))
        item = Item.create(name=json.loads(body)["name"])
        response = jsonify(ok=True, id=item.id)
        response.status_code = 201
        db.execute_sql("INSERT INTO handrolledkey (key, fingerprint, status, headers, body, "
                       "expires_at) VALUES (?, ?, ?, ?, ?, ?)",
                       (key, fingerprint, 201, json.dumps(list(response.headers.items())),
                        response.get_data(), time.time() + 86400))
    return response
