// The live page: microphone -> 16 kHz PCM frames over the WebSocket (wire v1, docs/serving.md),
// assistant audio blocks -> playback, and a timeline of who speaks when.
// URL options: ?autostart=1 starts at load, ?seconds=N sends "end" after N s of audio.
"use strict";

const RATE = 16000;
const FRAME = 1280; // 80 ms per message
const LEVEL = 0.01; // RMS above this (about -40 dBFS) draws the user as speaking
const params = new URLSearchParams(location.search);

// what the page knows, also for tests (window.duplex)
const state = {
  status: "idle", ready: null, blocks: 0, done: null, error: null, closeCode: null,
  sentSamples: 0, userFrames: [], responses: [], latencies: [], audioBlocks: 0,
};
window.duplex = state;

let ws = null, ctx = null, stream = null, node = null, pending = [], pendingLen = 0;
let playAt = 0, stopTimer = null;

function setStatus(text, isError) {
  state.status = text;
  const el = document.getElementById("status");
  el.textContent = text;
  el.className = isError ? "error" : "";
}

function toPcmFrame(samples) {
  const buf = new ArrayBuffer(1 + 2 * samples.length);
  const view = new DataView(buf);
  view.setUint8(0, 0x01);
  for (let i = 0; i < samples.length; i++) {
    const s = Math.max(-1, Math.min(1, samples[i]));
    view.setInt16(1 + 2 * i, Math.round(s * 32767), true);
  }
  return buf;
}

function resampleLinear(x, from, to) {
  if (from === to) return x;
  const n = Math.floor(x.length * to / from), y = new Float32Array(n);
  for (let i = 0; i < n; i++) {
    const t = i * from / to, j = Math.floor(t), f = t - j;
    y[i] = (x[j] || 0) * (1 - f) + (x[j + 1] || 0) * f;
  }
  return y;
}

function onAudio(chunk) {
  if (!ws || ws.readyState !== WebSocket.OPEN || !state.ready || state.ended) return;
  const x = resampleLinear(chunk, ctx.sampleRate, RATE);
  pending.push(x); pendingLen += x.length;
  while (pendingLen >= FRAME) {
    const all = new Float32Array(pendingLen);
    let o = 0;
    for (const p of pending) { all.set(p, o); o += p.length; }
    const frame = all.subarray(0, FRAME);
    pending = [all.slice(FRAME)]; pendingLen -= FRAME;
    let sum = 0;
    for (let i = 0; i < frame.length; i++) sum += frame[i] * frame[i];
    state.userFrames.push(Math.sqrt(sum / frame.length));
    ws.send(toPcmFrame(frame));
    state.sentSamples += FRAME;
  }
}

function play(block, pcm) {
  const n = (pcm.byteLength - 5) / 2;
  if (n <= 0) return;
  const view = new DataView(pcm, 5), buf = ctx.createBuffer(1, n, RATE), ch = buf.getChannelData(0);
  for (let i = 0; i < n; i++) ch[i] = view.getInt16(2 * i, true) / 32768;
  const src = ctx.createBufferSource();
  src.buffer = buf; src.connect(ctx.destination);
  playAt = Math.max(playAt, ctx.currentTime + 0.05);
  src.start(playAt); playAt += buf.duration;
  state.audioBlocks += 1;
}

function onBlock(m) {
  state.blocks += 1;
  state.latencies.push(m.latency_ms);
  for (const e of m.events) {
    const open = state.responses[state.responses.length - 1];
    if (e.kind === "onset") {
      if (open && open.end_s === null) open.end_s = e.time_s; // responses never overlap
      state.responses.push({ start_s: e.time_s, end_s: null, text: "" });
    }
    else if (e.kind === "epad" && open && open.end_s === null) open.end_s = e.time_s;
    else if (e.kind === "text" && open && open.end_s === null) open.text += e.text;
  }
  const lat = state.latencies.slice().sort((a, b) => a - b);
  const p = q => lat[Math.min(lat.length - 1, Math.floor(q * lat.length))];
  document.getElementById("stats").textContent =
    `session ${state.ready.session}: ${state.blocks} blocks; block latency (server) p50 ` +
    `${p(0.5).toFixed(0)} ms, p99 ${p(0.99).toFixed(0)} ms; audio ${state.ready.audio}`;
  renderResponses();
}

function renderResponses() {
  const body = document.querySelector("#responses tbody");
  body.innerHTML = "";
  for (const r of state.responses) {
    const tr = document.createElement("tr");
    for (const v of [r.start_s.toFixed(2), r.end_s === null ? "…" : r.end_s.toFixed(2), r.text]) {
      const td = document.createElement("td"); td.textContent = v; tr.appendChild(td);
    }
    body.appendChild(tr);
  }
}

function draw() {
  const c = document.getElementById("timeline"), g = c.getContext("2d");
  const W = c.width, H = c.height, left = 60, right = 10, top = 10, axis = 30;
  const now = state.sentSamples / RATE;
  const span = Math.max(10, Math.ceil(now + 1));
  const x = t => left + (W - left - right) * t / span;
  g.clearRect(0, 0, W, H);
  g.font = "13px sans-serif"; g.fillStyle = "#222";
  const rowH = (H - top - axis) / 2, userY = top, modelY = top + rowH;
  g.fillText("user", 8, userY + rowH / 2 + 4); g.fillText("model", 8, modelY + rowH / 2 + 4);
  g.fillStyle = "#1f77b4"; // user: frames whose level says speech, merged into bars
  const fs = FRAME / RATE;
  for (let i = 0; i < state.userFrames.length; i++) {
    if (state.userFrames[i] > LEVEL) g.fillRect(x(i * fs), userY + rowH * 0.2, x((i + 1) * fs) - x(i * fs) + 0.5, rowH * 0.6);
  }
  for (const r of state.responses) {
    const end = r.end_s === null ? Math.max(r.start_s, now) : r.end_s;
    g.fillStyle = "#ff7f0e";
    g.fillRect(x(r.start_s), modelY + rowH * 0.2, Math.max(2, x(end) - x(r.start_s)), rowH * 0.6);
    g.fillStyle = "#222";
    g.save(); g.beginPath();
    g.rect(x(r.start_s), modelY, Math.max(2, x(span) - x(r.start_s)), rowH); g.clip();
    g.fillText(r.text, x(r.start_s) + 3, modelY + rowH * 0.2 - 3);
    g.restore();
  }
  g.strokeStyle = "#999"; g.fillStyle = "#444"; g.beginPath();
  g.moveTo(left, H - axis); g.lineTo(W - right, H - axis); g.stroke();
  const step = span > 40 ? 5 : span > 20 ? 2 : 1;
  for (let t = 0; t <= span; t += step) {
    g.beginPath(); g.moveTo(x(t), H - axis); g.lineTo(x(t), H - axis + 5); g.stroke();
    g.fillText(String(t), x(t) - 4, H - axis + 18);
  }
  g.fillText("time (s)", W - right - 50, H - 2);
  g.strokeStyle = "#b00"; g.beginPath(); g.moveTo(x(now), top); g.lineTo(x(now), H - axis); g.stroke();
  requestAnimationFrame(draw);
}

async function start() {
  document.getElementById("start").disabled = true;
  setStatus("asking for the microphone…");
  try {
    stream = await navigator.mediaDevices.getUserMedia({
      audio: { channelCount: 1, echoCancellation: true, noiseSuppression: false, autoGainControl: false },
    });
    ctx = new AudioContext({ sampleRate: RATE });
    await ctx.audioWorklet.addModule("/static/capture.js");
    node = new AudioWorkletNode(ctx, "capture");
    node.port.onmessage = e => onAudio(e.data);
    ctx.createMediaStreamSource(stream).connect(node);
  } catch (e) {
    state.error = { code: "microphone", message: String(e) };
    setStatus(`no microphone: ${e}`, true);
    document.getElementById("start").disabled = false;
    return;
  }
  ws = new WebSocket(`${location.protocol === "https:" ? "wss" : "ws"}://${location.host}/api/chat`);
  ws.binaryType = "arraybuffer";
  ws.onopen = () => ws.send(JSON.stringify({ type: "hello", version: 1, sample_rate: RATE,
                                             encoding: "pcm_s16le", channels: 1, name: "browser" }));
  ws.onmessage = ev => {
    if (typeof ev.data !== "string") {
      play(new DataView(ev.data).getUint32(1, true), ev.data);
      return;
    }
    const m = JSON.parse(ev.data);
    if (m.type === "ready") {
      state.ready = m; setStatus("listening — speak");
      document.getElementById("stop").disabled = false;
      const secs = parseFloat(params.get("seconds") || "0");
      if (secs > 0) stopTimer = setInterval(() => { if (state.sentSamples >= secs * RATE) stop(); }, 50);
    } else if (m.type === "block") onBlock(m);
    else if (m.type === "done") { state.done = m; setStatus(`done: ${m.blocks} blocks (${m.reason})`); }
    else if (m.type === "error") { state.error = m; setStatus(`error ${m.code}: ${m.message}`, true); }
  };
  ws.onclose = ev => {
    state.closeCode = ev.code;
    if (!state.done && !state.error) setStatus(`closed (${ev.code} ${ev.reason})`, ev.code !== 1000);
    document.getElementById("stop").disabled = true;
    document.getElementById("start").disabled = false;
    finish();
  };
}

function stop() {
  if (stopTimer) { clearInterval(stopTimer); stopTimer = null; }
  if (ws && ws.readyState === WebSocket.OPEN && !state.ended) {
    state.ended = true;
    ws.send(JSON.stringify({ type: "end" }));
    setStatus("finishing…");
  }
}

function finish() {
  if (stream) stream.getTracks().forEach(t => t.stop());
  if (node) node.disconnect();
}

document.getElementById("start").onclick = start;
document.getElementById("stop").onclick = stop;
requestAnimationFrame(draw);
if (params.get("autostart") === "1") start();
