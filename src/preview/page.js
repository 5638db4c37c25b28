// sunset preview: re-renders the grid when the sample JSON is edited or a template file changes
// (server-sent events from /events); the template list reloads on a change.
"use strict";

const grid = document.getElementById("grid");
const sample = document.getElementById("sample");
const sampleError = document.getElementById("sample-error");

function showError(message) {
  sampleError.textContent = message;
  sampleError.hidden = false;
  grid.classList.add("stale");
}

async function rerender() {
  const text = sample.value;
  try {
    JSON.parse(text);
  } catch (e) {
    showError("The sample is not valid JSON: " + e.message);
    return;
  }
  let response;
  try {
    response = await fetch(grid.dataset.render, {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: text,
    });
  } catch (e) {
    showError("The preview server cannot be reached: " + e.message);
    return;
  }
  const body = await response.text();
  if (!response.ok) {
    showError(body);
    return;
  }
  grid.innerHTML = body;
  grid.classList.remove("stale");
  sampleError.hidden = true;
  grid.dataset.renders = String(Number(grid.dataset.renders || "0") + 1);
}

// Until the sample box is edited, it follows sample.json on disk.
let edited = false;

async function reloadSample() {
  if (!edited) {
    const response = await fetch(grid.dataset.sample).catch(() => null);
    if (response && response.ok) {
      sample.value = await response.text();
    }
  }
  rerender();
}

if (grid) {
  let timer;
  sample.addEventListener("input", () => {
    edited = true;
    clearTimeout(timer);
    timer = setTimeout(rerender, 250);
  });
}

new EventSource("/events").addEventListener("change", () => {
  if (grid) {
    reloadSample();
  } else {
    location.reload();
  }
});
