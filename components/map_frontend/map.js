// The Explore map: plotly.js in a Streamlit (v1) component frame.
//
// Why not st.plotly_chart: on a 200k-point map its front end turns every selected point
// into a renamed JSON object (about 166 bytes each, 29 MB for 173k points) before Python
// hears of the selection, and Streamlit re-sends that widget state on every later rerun.
// Here a selection goes back as the sample ids only, 4 bytes each (an Int32Array sent as
// bytes), and before plotly redraws the selection (bench/README.md, Explore).
//
// Protocol (Streamlit's component API, version 1, written out so no npm build is needed):
// the frame posts "streamlit:componentReady"; Streamlit posts "streamlit:render" with the
// arguments (bytes arguments arrive as Uint8Array) and its theme; the frame answers with
// "streamlit:setFrameHeight" and "streamlit:setComponentValue".
//
// Arguments: figure (the figure's JSON as UTF-8 bytes), revision (changes exactly when the
// figure does, so a rerun that sends the same figure draws nothing), height (pixels),
// config (plotly's config object).
"use strict";

const graph = document.getElementById("map");
let drawnRevision = null;
let lastSent = null;
let listening = false;

function message(type, fields) {
  return Object.assign({isStreamlitMessage: true, apiVersion: 1, type: type}, fields);
}

function post(type, fields) {
  window.parent.postMessage(message(type, fields), "*");
}

function postNow(type, fields) {
  // A posted message waits in the parent's task queue until the browser has drawn the next
  // frame, and drawing plotly's new selection of 200k points in a software renderer takes
  // 0.3-0.5 s. The frame is same-origin (Streamlit serves it), so the message is handed
  // to Streamlit's listener in this task instead: the selection leaves for Python while the
  // browser draws it. Falls back to postMessage where the parent is out of reach.
  let parent = null;
  try {
    parent = window.parent;
    if (parent === window || typeof parent.dispatchEvent !== "function") parent = null;
  } catch (err) {
    parent = null;
  }
  if (parent === null) {
    post(type, fields);
    return;
  }
  const copy = Object.assign({}, fields);
  if (copy.value instanceof Uint8Array) copy.value = parent.Uint8Array.from(copy.value);
  // Streamlit batches widget changes with setTimeout(0), which would again wait for the
  // frame; while it handles this one message, a zero-delay timer runs as a microtask (at
  // the end of this task) instead.
  const setTimer = parent.setTimeout;
  parent.setTimeout = function (callback, delay, ...rest) {
    if (!delay && typeof callback === "function") {
      parent.queueMicrotask(() => callback(...rest));
      return 0;
    }
    return setTimer.call(parent, callback, delay, ...rest);
  };
  let handed = false;
  try {
    parent.dispatchEvent(new parent.MessageEvent("message", {
      data: message(type, copy), source: window, origin: window.location.origin}));
    handed = true;
  } catch (err) {
    handed = false;  // an event this browser refuses to build: post it instead
  } finally {
    parent.setTimeout = setTimer;
  }
  if (!handed) post(type, fields);
}

function selectedIds(points) {
  // sample ids of the selected points, each once, in plotly's order (trace by trace)
  const seen = new Set();
  const ids = [];
  for (const point of points) {
    const id = point.customdata;
    if (id === undefined || id === null || seen.has(id)) continue;
    seen.add(id);
    ids.push(id);
  }
  return Int32Array.from(ids);
}

function selectionKey(ids) {
  // FNV-1a over every id (a millisecond for 200k ids)
  let hash = 0x811c9dc5;
  for (let i = 0; i < ids.length; i++) hash = Math.imul(hash ^ ids[i], 0x01000193) >>> 0;
  return ids.length + ":" + hash;
}

function sendSelection(ids) {
  // one message per new selection: plotly can report the same one twice (a click, a redraw)
  const key = selectionKey(ids);
  if (key === lastSent) return;
  lastSent = key;
  postNow("streamlit:setComponentValue",
          {value: new Uint8Array(ids.buffer), dataType: "bytes"});
}

function listen() {
  if (listening) return;
  listening = true;
  graph.on("plotly_selected", (event) => {
    if (event && event.points) sendSelection(selectedIds(event.points));
  });
  graph.on("plotly_deselect", () => sendSelection(new Int32Array(0)));
}

function themed(layout, theme) {
  // Streamlit's theme for what plotly draws outside the markers
  if (!theme) return layout;
  layout.font = Object.assign({}, layout.font, {family: theme.font, color: theme.textColor});
  layout.paper_bgcolor = theme.backgroundColor;
  if (theme.base === "dark") layout.plot_bgcolor = theme.backgroundColor;
  return layout;
}

function draw(args, theme) {
  const figure = JSON.parse(new TextDecoder().decode(args.figure));
  const layout = themed(figure.layout || {}, theme);
  const config = Object.assign({responsive: true}, args.config || {});
  Plotly.react(graph, figure.data, layout, config).then(() => {
    listen();
    post("streamlit:setFrameHeight", {height: Number(args.height) || graph.offsetHeight});
  });
}

window.addEventListener("message", (event) => {
  const data = event.data;
  if (!data || data.type !== "streamlit:render") return;
  const args = data.args || {};
  const revision = args.revision + "|" + JSON.stringify(data.theme || {});
  if (revision === drawnRevision) return;
  drawnRevision = revision;
  draw(args, data.theme);
});

post("streamlit:componentReady", {});
