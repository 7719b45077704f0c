// The orders dashboard: durable POST with an Idempotency-Key, a retry of the very same
// request, the orders table from GET /orders, and the live feed of order.created events.

const page = document.body.dataset;
const { connect } = await import(page.client);
const $ = (selector) => document.querySelector(selector);

let lastRequest = null;  // { key, body } of the last order sent

// -- placing an order and retrying it ---------------------------------------------------

function orderBody() {
  return {
    product_id: $("#product").value.trim(),
    quantity: Number($("#quantity").value) || 1,
  };
}

async function send(request) {
  $("#place").disabled = $("#retry").disabled = true;
  try {
    const response = await fetch("/orders", {
      method: "POST",
      headers: { "Content-Type": "application/json", "Idempotency-Key": request.key },
      body: JSON.stringify(request.body),
    });
    showResponse(request, response.status, response.statusText,
      response.headers.get("Idempotent-Replayed"), await response.text());
    refreshOrders();
  } catch (error) {
    showResponse(request, 0, "network error", null, String(error));
  } finally {
    $("#place").disabled = false;
    $("#retry").disabled = lastRequest === null;
  }
}

function showResponse(request, status, statusText, replayed, body) {
  $("#response").hidden = false;
  $("#response").dataset.replayed = replayed === "true" ? "true" : "false";
  $("#response-status").textContent = `HTTP ${status} ${statusText}`.trim();
  $("#response-status").className = "badge " + (status >= 200 && status < 300 ? "ok" : "bad");
  $("#response-replayed").textContent = replayed === "true"
    ? "Idempotent-Replayed: true · handler not run, no event"
    : "first run · handler ran";
  $("#response-replayed").className = "badge " + (replayed === "true" ? "replay" : "fresh");
  $("#response-key").textContent = request.key;
  $("#response-body").textContent = pretty(body);
}

function pretty(text) {
  try {
    return JSON.stringify(JSON.parse(text), null, 2);
  } catch (error) {
    return text;
  }
}

$("#order-form").addEventListener("submit", (event) => {
  event.preventDefault();
  lastRequest = { key: crypto.randomUUID(), body: orderBody() };
  send(lastRequest);
});

$("#retry").addEventListener("click", () => lastRequest && send(lastRequest));

// -- the orders table -------------------------------------------------------------------

async function refreshOrders() {
  try {
    const response = await fetch("/orders", { headers: { Accept: "application/json" } });
    const data = await response.json();
    renderOrders(Array.isArray(data) ? data : data.orders || []);
  } catch (error) {
    // The server is away; the next reconnect refetches.
  }
}

function renderOrders(orders) {
  const rows = orders.map((order) => row([
    order.order_id || order.id, order.product_id, order.quantity,
    formatTime(order.created_at),
  ]));
  $("#orders tbody").replaceChildren(...rows);
  $("#orders-empty").hidden = orders.length > 0;
}

function row(cells) {
  const tr = document.createElement("tr");
  for (const value of cells) {
    const td = document.createElement("td");
    td.textContent = value === undefined || value === null ? "" : String(value);
    tr.append(td);
  }
  return tr;
}

function formatTime(value) {
  // Epoch seconds (GET /orders) or an RFC 3339 string (event "ts").
  const date = typeof value === "number" ? new Date(value * 1000) : value ? new Date(value) : null;
  return date && !isNaN(date) ? date.toLocaleTimeString() : value || "";
}

// -- realtime ---------------------------------------------------------------------------

const STATUS_NOTES = {
  open: "connected",
  reconnecting: "connection lost · reconnecting with backoff",
  closed: "connection closed",
};

function showStatus(status) {
  $("#status").textContent = status;
  $("#status").dataset.status = status;
  if (status !== "open") $("#status").dataset.joined = "false";
  if (STATUS_NOTES[status]) addNote(STATUS_NOTES[status]);
}

function joined(frame) {
  if (frame.room !== page.room) return;
  $("#status").dataset.joined = "true";
  addNote(`joined room ${frame.room} · orders refetched`);
  refreshOrders();  // realtime is not persistence: after every (re)join, refetch the state
}

function addNote(text) {
  const item = document.createElement("li");
  item.className = "note";
  item.innerHTML = "<time></time> <span></span>";
  item.querySelector("time").textContent = new Date().toLocaleTimeString();
  item.querySelector("span").textContent = text;
  $("#feed").prepend(item);
}

function addToFeed(event) {
  const item = document.createElement("li");
  item.className = "event";
  item.dataset.id = event.id;
  const payload = event.payload || {};
  item.innerHTML = "<time></time> <b></b> <span class='what'></span> <small></small>";
  item.querySelector("time").textContent = formatTime(event.ts);
  item.querySelector("b").textContent = event.type;
  item.querySelector(".what").textContent =
    [payload.order_id, payload.product_id, payload.quantity && "× " + payload.quantity]
      .filter(Boolean).join(" ");
  item.querySelector("small").textContent = `id ${event.id} · node ${event.node}`;
  $("#feed").prepend(item);
  $("#feed-empty").hidden = true;
}

const client = connect(page.ws, { rooms: [page.room] });
client.on("status", showStatus);
client.on("cnerium.subscribed", joined);
client.on("order.created", (event) => {
  addToFeed(event);
  refreshOrders();
});
showStatus(client.status);
refreshOrders();
window.cneriumClient = client;  // to play with from the browser console
