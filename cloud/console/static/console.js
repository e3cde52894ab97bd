// The lifelong console's live updates (cloud/console/static/console.js; no third-party code).
// Opens the GM's server-sent events at /ui/events and, on each `change`, fetches the page again
// with fragment=1 and swaps the inner HTML of <main id="content">; #live[data-state] says whether
// the stream is connected. A swap is skipped while the user types in a field of the page.
(function () {
  "use strict";
  var live = document.getElementById("live");
  var content = document.getElementById("content");
  if (!live || !content || !window.EventSource || content.dataset.page === "login") {
    return;
  }
  var pending = null;

  function setState(state) {
    live.dataset.state = state;
  }

  function typing() {
    var el = document.activeElement;
    return el && content.contains(el) && (el.tagName === "INPUT" || el.tagName === "SELECT") &&
      el.type !== "hidden" && el.type !== "submit" && el.value !== "";
  }

  function refresh(version) {
    if (typing()) {
      pending = version;  // swapped once the field loses focus
      return;
    }
    pending = null;
    var url = new URL(location.href);
    url.searchParams.set("fragment", "1");
    url.searchParams.delete("labelled");
    url.searchParams.delete("deleted");
    fetch(url.toString(), {credentials: "same-origin", headers: {"Accept": "text/html"}})
      .then(function (answer) {
        if (!answer.ok) {
          throw new Error("status " + answer.status);
        }
        return answer.text();
      })
      .then(function (html) {
        content.innerHTML = html;
        content.dataset.version = String(version);
      })
      .catch(function () {
        setState("lost");
      });
  }

  document.addEventListener("focusout", function () {
    if (pending !== null) {
      setTimeout(function () {
        if (pending !== null) {
          refresh(pending);
        }
      }, 0);
    }
  });

  var source = new EventSource("/ui/events?since=" + encodeURIComponent(content.dataset.version || ""));
  source.onopen = function () {
    setState("live");
  };
  source.onerror = function () {
    setState(source.readyState === EventSource.CLOSED ? "lost" : "connecting");
  };
  source.addEventListener("change", function (event) {
    var data = {};
    try {
      data = JSON.parse(event.data);
    } catch (e) {
      return;
    }
    setState("live");
    refresh(data.version);
  });
})();
