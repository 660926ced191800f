// The dashboard's own script: JSON bodies for htmx requests to the API, what happens after an
// action, the sign-in form, bundle upload with progress, and live updates by server-sent
// events. Every HTML fragment it inserts was rendered (and escaped) by the controller.
(function () {
  "use strict";

  function csrfToken() {
    var meta = document.querySelector('meta[name="csrf-token"]');
    return meta ? meta.getAttribute("content") : "";
  }

  function flash(text, ok) {
    var box = document.getElementById("flash");
    if (!box) return;
    var line = document.createElement("div");
    line.textContent = text;
    if (!ok) line.className = "bad";
    box.appendChild(line);
    setTimeout(function () { line.remove(); }, ok ? 4000 : 10000);
  }

  // pydantic's list of errors as "where: what; ..."
  function problems(list) {
    return list.map(function (e) {
      return e && e.msg ? (e.loc || []).join(".") + ": " + e.msg : JSON.stringify(e);
    }).join("; ");
  }

  function describe(xhr) {
    var text = xhr.status ? xhr.status + " " + (xhr.statusText || "") : "network error";
    try {
      var detail = JSON.parse(xhr.responseText).detail;
      if (typeof detail === "string") {
        text += ": " + detail;
      } else if (Array.isArray(detail)) {
        text += ": " + problems(detail);
      } else if (detail && detail.reason) {
        var more = detail.detail || detail.message || "";
        if (Array.isArray(more)) more = problems(more);
        text += ": " + detail.reason + (more ? " - " + (typeof more === "string" ? more : JSON.stringify(more)) : "");
      } else if (detail) {
        text += ": " + JSON.stringify(detail);
      }
    } catch (e) { /* not JSON */ }
    return text;
  }

  function localPath(target) {
    return typeof target === "string" && target.charAt(0) === "/" && target.charAt(1) !== "/" && target.indexOf("\\") < 0 ? target : "/";
  }

  // form values typed by the nearest data-types: {"field": "int" | "float" | "bool" | "json" | "list"}
  function typed(elt, key, value) {
    var holder = elt && elt.closest ? elt.closest("[data-types]") : null;
    var types = holder ? JSON.parse(holder.getAttribute("data-types")) : {};
    switch (types[key]) {
      case "int": return parseInt(value, 10);
      case "float": return parseFloat(value);
      case "bool": return value === true || value === "true" || value === "on";
      case "json":
        // text that is not JSON goes as it is: the API answers what is wrong with it
        try { return JSON.parse(value); } catch (e) { return value; }
      case "list": return value.split(",").map(function (v) { return v.trim(); }).filter(Boolean);
      default: return value;
    }
  }

  // "a.b" fields nest: {"a": {"b": value}}
  function put(body, key, value) {
    var parts = key.split(".");
    var at = body;
    for (var i = 0; i < parts.length - 1; i++) {
      if (typeof at[parts[i]] !== "object" || at[parts[i]] === null) at[parts[i]] = {};
      at = at[parts[i]];
    }
    at[parts[parts.length - 1]] = value;
  }

  if (window.htmx) {
    // the API takes JSON: requests with a body send the form's fields as one JSON object
    window.htmx.defineExtension("json-body", {
      onEvent: function (name, evt) {
        if (name === "htmx:configRequest" && evt.detail.verb !== "get") {
          evt.detail.headers["Content-Type"] = "application/json";
        }
        return true;
      },
      encodeParameters: function (xhr, parameters, elt) {
        xhr.overrideMimeType("text/json");
        var body = {};
        parameters.forEach(function (value, key) {
          if (value !== "") put(body, key, typed(elt, key, value));
        });
        return JSON.stringify(body);
      }
    });
  }

  document.addEventListener("htmx:afterRequest", function (evt) {
    var elt = evt.detail.elt;
    var xhr = evt.detail.xhr;
    var verb = evt.detail.requestConfig ? evt.detail.requestConfig.verb : "get";
    if (verb === "get") {
      if (xhr && xhr.status === 401) location.href = "/login?next=" + encodeURIComponent(location.pathname);
      return;
    }
    if (!evt.detail.successful) {
      flash(describe(xhr), false);
      return;
    }
    if (elt.hasAttribute("data-redirect")) {
      location.href = localPath(elt.getAttribute("data-redirect"));
      return;
    }
    var answer = null;
    try { answer = JSON.parse(xhr.responseText); } catch (e) { /* no JSON body */ }
    if (elt.hasAttribute("data-go") && answer && answer.id) {
      location.href = elt.getAttribute("data-go") + encodeURIComponent(answer.id);
      return;
    }
    if (elt.hasAttribute("data-show") && answer) {
      var shown = document.querySelector(elt.getAttribute("data-show"));
      if (shown) shown.textContent = answer.token || "";
    }
    flash(elt.getAttribute("data-done") || "done", true);
    if (elt.hasAttribute("data-reload")) {
      location.reload();
      return;
    }
    var targets = elt.getAttribute("data-refresh");
    if (targets) {
      document.querySelectorAll(targets).forEach(function (t) { window.htmx.trigger(t, "refresh"); });
    }
  });

  document.addEventListener("htmx:sendError", function () { flash("the controller did not answer", false); });

  function onReady(fn) {
    if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", fn);
    else fn();
  }

  onReady(function () {
    var login = document.getElementById("login-form");
    if (login) {
      login.addEventListener("submit", function (e) {
        e.preventDefault();
        var data = new FormData(login);
        var error = document.getElementById("login-error");
        error.textContent = "";
        fetch("/api/auth/login", {
          method: "POST",
          credentials: "same-origin",
          headers: { "Content-Type": "application/json" },
          body: JSON.stringify({ name: data.get("name"), password: data.get("password") })
        }).then(function (resp) {
          if (resp.ok) {
            location.href = localPath(login.getAttribute("data-next"));
            return;
          }
          return resp.text().then(function (body) {
            error.textContent = describe({ status: resp.status, statusText: resp.statusText, responseText: body });
          });
        }).catch(function () { error.textContent = "the controller did not answer"; });
      });
    }

    var upload = document.getElementById("upload-form");
    if (upload) {
      upload.addEventListener("submit", function (e) {
        e.preventDefault();
        var file = upload.querySelector('input[type="file"]').files[0];
        if (!file) return;
        var bar = upload.querySelector("progress");
        var xhr = new XMLHttpRequest();
        xhr.open("POST", "/api/bundles");
        xhr.setRequestHeader("X-CSRF-Token", csrfToken());
        xhr.setRequestHeader("Content-Type", "application/octet-stream");
        xhr.upload.onprogress = function (ev) {
          if (ev.lengthComputable) { bar.max = ev.total; bar.value = ev.loaded; }
        };
        xhr.onload = function () {
          if (xhr.status >= 200 && xhr.status < 300) { flash("uploaded", true); location.reload(); }
          else flash(describe(xhr), false);
        };
        xhr.onerror = function () { flash("upload failed: the controller did not answer", false); };
        xhr.send(file);
      });
    }

    document.querySelectorAll("[data-live]").forEach(function (el) {
      if (!window.EventSource) return;
      var source = new EventSource(el.getAttribute("data-live"));
      source.addEventListener("detection", function (e) {
        var body = document.getElementById("detections-body");
        if (!body) return;
        body.insertAdjacentHTML("afterbegin", e.data);
        var empty = document.getElementById("detections-empty");
        if (empty) empty.remove();
        while (body.rows.length > 50) body.deleteRow(-1);
      });
      source.addEventListener("state", function (e) {
        var panel = document.getElementById("device-state");
        if (!panel) return;
        panel.innerHTML = e.data;
        if (window.htmx) window.htmx.process(panel);
      });
      window.addEventListener("pagehide", function () { source.close(); });
    });
  });
})();
