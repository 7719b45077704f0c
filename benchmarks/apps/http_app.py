"""The app the HTTP benchmark serves: one route per measured path, all on one SQLite file."""

from __future__ import annotations

import os

import peewee
from flask import Flask, jsonify, request

from flask_cnerium import Cnerium, created

DATA_DIR = os.environ.get("BENCH_DIR", "/tmp/cnerium-bench")
db = peewee.SqliteDatabase(os.path.join(DATA_DIR, "app.db"), timeout=5,
                           pragmas={"journal_mode": "wal", "synchronous": "normal"})


class Item(peewee.Model):
    """The row each POST inserts."""

    name = peewee.CharField()

    class Meta:
        database = db


app = Flask(__name__)
app.config["CNERIUM_DATA_DIR"] = DATA_DIR
cnerium = Cnerium(app, database=db)
db.create_tables([Item], safe=True)
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
