// paastis dashboard: live updates on top of pages that work without this script.
// Wake and stop buttons post in the background, show their progress, and swap the app's row
// for the fresh one paastis sends back; countdowns tick; rows refresh every few seconds.
(function () {
  "use strict";
  var REFRESH_MS = 5000;
  var csrf = document.querySelector('meta[name="csrf-token"]');
  var table = document.querySelector("table.apps");
  if (!csrf || !table) return;
  var token = csrf.getAttribute("content");

  function say(seconds) {
    seconds = Math.max(0, Math.round(seconds));
    if (seconds < 60) return seconds + " s";
    var minutes = Math.floor(seconds / 60);
    if (minutes < 60) return minutes + " min " + String(seconds % 60).padStart(2, "0") + " s";
    return Math.floor(minutes / 60) + " h " + String(minutes % 60).padStart(2, "0") + " min";
  }

  function tick() {
    document.querySelectorAll(".countdown[data-deadline]").forEach(function (el) {
      var left = (parseInt(el.getAttribute("data-deadline"), 10) - Date.now()) / 1000;
      el.textContent = left > 0 ? say(left) : "at the next idle check";
    });
  }

  function request(method, url, body) {
    return fetch(url, {
      method: method,
      body: body,
      credentials: "same-origin",
      headers: {"X-Requested-With": "paastis-dashboard", "X-CSRF-Token": token},
    }).then(function (response) {
      if (response.status === 401) { location.reload(); throw new Error("signed out"); }
      return response.text().then(function (text) { return {ok: response.ok, status: response.status, text: text}; });
    });
  }

  function replaceRow(row, html) {
    var holder = document.createElement("tbody");
    holder.innerHTML = html.trim();
    var fresh = holder.querySelector("tr");
    if (fresh) row.replaceWith(fresh);
    return fresh;
  }

  function act(form, event) {
    event.preventDefault();
    var row = form.closest("tr");
    var action = form.getAttribute("data-action");
    var app = row.getAttribute("data-app");
    if (action === "stop" && !window.confirm("Stop " + app + "? The next request will wake it again.")) return;
    var body = new FormData(form);
    body.set("confirmed", "yes");
    var began = Date.now();
    var progress = row.querySelector(".progress");
    var status = row.querySelector(".status .badge");
    row.classList.add("busy");
    row.querySelectorAll("button").forEach(function (b) { b.disabled = true; });
    var verb = action === "wake" ? "waking" : "stopping";
    if (status) { status.textContent = verb; status.className = "badge " + verb; }
    var timer = setInterval(function () { progress.textContent = verb + "… " + say((Date.now() - began) / 1000); }, 250);
    progress.textContent = verb + "…";
    request("POST", form.action, body).then(function (answer) {
      clearInterval(timer);
      if (answer.text.trim().indexOf("<tr") === 0) { replaceRow(row, answer.text); tick(); return; }
      row.classList.remove("busy");
      progress.textContent = answer.text || ("failed (" + answer.status + ")");
      progress.className = "progress error";
    }).catch(function (error) {
      clearInterval(timer);
      progress.textContent = "no answer: " + error.message;
      progress.className = "progress error";
    });
  }

  function refresh() {
    request("GET", table.getAttribute("data-rows-url")).then(function (answer) {
      if (!answer.ok) return;
      var holder = document.createElement("tbody");
      holder.innerHTML = answer.text.trim();
      holder.querySelectorAll("tr[data-app]").forEach(function (fresh) {
        var current = document.getElementById(fresh.id);
        if (current && !current.classList.contains("busy")) current.replaceWith(fresh);
      });
      tick();
    }).catch(function () {});
  }

  table.addEventListener("submit", function (event) {
    var form = event.target;
    if (form.classList.contains("action")) act(form, event);
  });
  tick();
  setInterval(tick, 1000);
  setInterval(refresh, REFRESH_MS);
})();
