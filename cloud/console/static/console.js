// The lifelong console's live updates (cloud/console/static/console.js; no third-party code).
// Opens the GM's server-sent events at /ui/events and, on each `change`, fetches the page again
// with fragment=1 and swaps the inner HTML of <main id="content">; #live[data-state] says whether
// the stream is connected. A swap is skipped while the user types in a field of the page.
// A stream that fails, or is refused (503: every place is taken), is opened again after a capped,
// growing delay (EventSource itself gives up on an answer that is not 200); once it is open
// again the page's content is fetched once, so a change made while it was away is not missed.
(function () {
  "use strict";
  var live = document.getElementById("live");
  var content = document.getElementById("content");
  if (!live || !content || !window.EventSource || content.dataset.page === "login") {
    return;
  }
  var FIRST_DELAY = 1000;
  var MAX_DELAY = 10000;
  var pending = null;
  var source = null;
  var delay = FIRST_DELAY;
  var fetchDelay = FIRST_DELAY;
  var failures = 0;
  var timer = null;
  var asked = 0;

  function setState(state) {
    live.dataset.state = state;
  }

  function typing() {
    var el = document.activeElement;
    return el && content.contains(el) && (el.tagName === "INPUT" || el.tagName === "SELECT") &&
      el.type !== "hidden" && el.type !== "submit" && el.value !== "";
  }

  // Fetch the content again and swap it in; `version` is what the page then shows (the
  // answer's own version, when it gives one, is newer). Only the latest fetch is swapped in.
  function refresh(version) {
    if (typing()) {
      pending = version;  // swapped once the field loses focus
      return;
    }
    pending = null;
    var mine = ++asked;
    var url = new URL(location.href);
    url.searchParams.set("fragment", "1");
    url.searchParams.delete("labelled");
    url.searchParams.delete("deleted");
    fetch(url.toString(), {credentials: "same-origin", headers: {"Accept": "text/html"}})
      .then(function (answer) {
        if (!answer.ok) {
          throw new Error("status " + answer.status);
        }
        var shown = answer.headers.get("X-Console-Version");
        return answer.text().then(function (html) {
          return {html: html, version: shown || version};
        });
      })
      .then(function (got) {
        if (mine !== asked) {
          return;  // a later fetch is under way
        }
        content.innerHTML = got.html;
        content.dataset.version = String(got.version);
        fetchDelay = FIRST_DELAY;
        if (source !== null && source.readyState === EventSource.OPEN) {
          setState("live");
        }
      })
      .catch(function () {
        if (mine !== asked) {
          return;
        }
        // The content is behind what the stream said: fetch it again later (a later change
        // fetches it at once).
        setState("lost");
        var wait = fetchDelay;
        fetchDelay = Math.min(fetchDelay * 2, MAX_DELAY);
        setTimeout(function () {
          if (mine === asked) {
            refresh(version);
          }
        }, wait);
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

  // Open the stream again after the current delay (doubled each time, at most MAX_DELAY, with
  // some jitter so that many pages do not all come back at once).
  function reconnect() {
    if (source !== null) {
      source.close();
      source = null;
    }
    if (timer !== null) {
      return;
    }
    failures += 1;
    var wait = delay * (0.8 + 0.4 * Math.random());
    delay = Math.min(delay * 2, MAX_DELAY);
    timer = setTimeout(function () {
      timer = null;
      connect();
    }, wait);
  }

  function connect() {
    var since = content.dataset.version || "";
    var stream = new EventSource("/ui/events?since=" + encodeURIComponent(since));
    source = stream;
    stream.onopen = function () {
      if (stream !== source) {
        return;
      }
      setState("live");
      delay = FIRST_DELAY;
      if (failures > 0) {
        failures = 0;
        refresh(content.dataset.version || "");  // what changed while the stream was away
      }
    };
    stream.onerror = function () {
      if (stream !== source) {
        return;
      }
      // A refused stream (503) or a lost one: open it again ourselves, after a delay.
      setState(failures > 0 ? "lost" : "connecting");
      reconnect();
    };
    stream.addEventListener("change", function (event) {
      if (stream !== source) {
        return;
      }
      var data = {};
      try {
        data = JSON.parse(event.data);
      } catch (e) {
        return;
      }
      setState("live");
      refresh(data.version);
    });
  }

  connect();
})();
