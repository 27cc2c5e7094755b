// The demo page served by `sansio-signal serve` at `/`: join a room, see every peer's
// state, chat peer-to-peer over data channels and through the server, read the log, and
// download the client's trace (JSON lines: `sansio-signal diagnose` reads it with the
// relay's and other peers' traces). Everything WebRTC- and protocol-related is in
// sansio-signal.js.
import { SignalingClient, relayIceServers } from "/sansio-signal.js";

const $ = (id) => document.getElementById(id);
let client = null;
let traced = null; // the last client made (kept after a refused join: its trace says why)
const routes = new Map(); // peerId → the pair type ("host", "srflx", "relay") its connection uses

function time() {
  return new Date().toLocaleTimeString();
}

function log(level, text) {
  const item = document.createElement("li");
  item.className = level;
  item.textContent = `${time()} ${text}`;
  $("log").append(item);
  item.scrollIntoView({ block: "nearest" });
  (level === "warning" || level === "error" ? console.warn : console.log)(text);
}

function addMessage(list, from, text) {
  const item = document.createElement("li");
  const who = document.createElement("span");
  who.className = "from";
  who.textContent = `${from}: `;
  item.append(who, document.createTextNode(text));
  $(list).append(item);
  item.scrollIntoView({ block: "nearest" });
}

/** One line per member: their id and the live state of our connection to them. */
function render() {
  const list = $("participants");
  list.replaceChildren();
  if (client !== null && client.room !== null) {
    const me = document.createElement("li");
    me.dataset.peer = client.userId;
    me.innerHTML = `<span></span><span class="state connected">you</span>`;
    me.firstChild.textContent = client.userId;
    list.append(me);
  }
  const peers = client === null ? [] : [...client.peers].sort(([a], [b]) => (a < b ? -1 : 1));
  for (const [peerId, peer] of peers) {
    const item = document.createElement("li");
    item.dataset.peer = peerId;
    const name = document.createElement("span");
    name.textContent = peerId;
    const state = document.createElement("span");
    const open = client.channel(peerId) !== null;
    const label = open ? "connected" : peer.link === "failed" || peer.state === "failed" ? "failed" : "connecting";
    state.className = `state ${label}`;
    state.dataset.state = label;
    const route = routes.get(peerId);
    state.textContent = `${label} · ${peer.state} · epoch ${peer.epoch}${route === undefined ? "" : ` · ${route}`}`;
    if (route !== undefined) state.dataset.route = route;
    item.append(name, state);
    list.append(item);
  }
  const inRoom = client !== null && client.state === "joined";
  $("server-text").disabled = $("server-send").disabled = !inRoom;
  const anyOpen = peers.some(([peerId]) => client.channel(peerId) !== null);
  $("p2p-text").disabled = $("p2p-send").disabled = !anyOpen;
  $("status").textContent = client === null ? "offline" : client.state === "joined" ? `in ${client.room.roomId} as ${client.userId}` : client.state;
  $("status").className = `status ${client !== null ? client.state : ""}`;
}


async function join(event) {
  event.preventDefault();
  const room = $("room").value.trim();
  const name = $("name").value.trim();
  const url = `${location.protocol === "https:" ? "wss" : "ws"}://${location.host}/`;
  if (client !== null) client.close();
  $("join-error").textContent = "";
  // the relay's ICE servers, fetched again before each connection (fresh TURN credentials)
  client = new SignalingClient({ url, userId: name, iceServers: () => relayIceServers(), trace: true });
  routes.clear();
  traced = client;
  $("download-trace").disabled = false;
  window.sansioClient = client; // for the browser tests and the curious
  const on = (type, handler) => client.addEventListener(type, (e) => { handler(e.detail); render(); });
  on("log", ({ level, text }) => log(level, text));
  on("open", () => log("info", `Connected to ${url}`));
  on("close", ({ code }) => log("warning", `Disconnected from the relay (close ${code})`));
  on("room-joined", ({ roomId, participants: others }) => log("info", `Room ${roomId}: ${others.length ? others.join(", ") : "nobody else yet"}`));
  on("room-resumed", ({ roomId }) => log("info", `Back in ${roomId}: peer connections kept`));
  on("join-refused", ({ code, message }) => {
    // Back to the lobby: the error stays on screen until the next try.
    log("error", `Join refused (${code}): ${message}`);
    $("join-error").textContent = `Join refused (${code}): ${message}`;
    client.close();
    client = null;
    $("leave").disabled = true;
  });
  // The participant list is drawn from the client itself after each of these.
  for (const type of ["peer-joined", "peer-state", "channel-open", "room-left"]) on(type, () => {});
  on("peer-failed", ({ peerId, reason }) => log("error", `Giving up on ${peerId}: ${reason}`));
  on("peer-route", ({ peerId, pairType, localType, localAddress, remoteType, remoteAddress }) => {
    routes.set(peerId, pairType);
    log("info", `connection with ${peerId} uses a ${pairType} pair (local ${localType} ${localAddress}, remote ${remoteType} ${remoteAddress})`);
  });
  // A new attempt or a peer gone: no pair until the next "peer-route". (What ICE
  // gathering found, servers that failed included, is in the client's own log lines.)
  for (const type of ["peer-connecting", "peer-left"]) on(type, ({ peerId }) => routes.delete(peerId));
  on("message", ({ from, text }) => addMessage("p2p-messages", from, text));
  on("chat", ({ from, text }) => addMessage("server-messages", from, text));
  on("server-error", () => {});
  $("leave").disabled = false;
  client.join(room); // sent once the server is reached
  try {
    await client.connect();
  } catch (error) {
    log("error", `${error.message}; trying again`); // the client keeps trying: see "unreachable"
  }
  render();
}

/** Save the trace as NAME.jsonl. */
function downloadTrace() {
  if (traced === null) return;
  const blob = new Blob([traced.trace()], { type: "application/x-ndjson" });
  const link = document.createElement("a");
  link.href = URL.createObjectURL(blob);
  link.download = `${traced.userId}.jsonl`;
  link.click();
  setTimeout(() => URL.revokeObjectURL(link.href), 0);
}

$("join-form").addEventListener("submit", join);
$("download-trace").addEventListener("click", downloadTrace);
$("leave").addEventListener("click", () => {
  if (client !== null) client.leave();
  render();
});
$("p2p-form").addEventListener("submit", (event) => {
  event.preventDefault();
  const text = $("p2p-text").value;
  if (!text || client === null) return;
  const sent = client.broadcast(text);
  addMessage("p2p-messages", `${client.userId} → ${sent} peer(s)`, text);
  $("p2p-text").value = "";
});
$("server-form").addEventListener("submit", (event) => {
  event.preventDefault();
  const text = $("server-text").value;
  if (!text || client === null) return;
  client.chat(text);
  $("server-text").value = "";
});
render();
