(function () {
  "use strict";
  // rows: [name, score, verdict, label, defect, thumbnail, full-size picture, distance to threshold], worst first
  var rows = JSON.parse(document.getElementById("rows-data").textContent);
  var grid = document.getElementById("grid");
  var shown = document.getElementById("shown");
  var search = document.getElementById("search");
  var viewer = document.getElementById("viewer");
  var BATCH = Number(grid.dataset.batch || 120);
  var verdict = "all", matches = rows, rendered = 0;

  function span(className, text) {
    var element = document.createElement("span");
    element.className = className;
    element.textContent = text;
    return element;
  }

  function card(row, position) {
    var figure = document.createElement("figure");
    figure.className = "card " + row[2];
    figure.dataset.position = String(position);
    figure.dataset.verdict = row[2];
    if (row[5]) {
      var image = document.createElement("img");
      image.loading = "lazy";
      image.decoding = "async";
      image.width = 160;
      image.height = 160;
      image.alt = row[0];
      image.src = row[5];
      figure.appendChild(image);
    } else {
      figure.appendChild(span("nopicture", "no picture"));
    }
    var caption = document.createElement("figcaption");
    caption.appendChild(span("name", row[0]));
    caption.lastChild.title = row[0];
    caption.appendChild(span("score", "score " + row[1].toPrecision(4)));
    caption.appendChild(span("badge " + row[2], row[2] || (row[3] === 1 ? row[4] : "")));
    if (row[7] !== null) {
      caption.appendChild(span("distance", (row[7] >= 0 ? "+" : "") + row[7].toPrecision(3) + " from threshold"));
    } else if (row[3] >= 0) {
      caption.appendChild(span("distance", row[3] === 1 ? "defective: " + row[4] : "normal"));
    }
    figure.appendChild(caption);
    return figure;
  }

  function renderMore() {
    var end = Math.min(matches.length, rendered + BATCH);
    var part = document.createDocumentFragment();
    for (var i = rendered; i < end; i++) part.appendChild(card(matches[i], i));
    grid.appendChild(part);
    rendered = end;
  }

  function apply() {
    var query = search.value.trim().toLowerCase();
    matches = rows.filter(function (row) {
      return (verdict === "all" || row[2] === verdict) && (!query || row[0].toLowerCase().indexOf(query) >= 0);
    });
    grid.replaceChildren();
    rendered = 0;
    renderMore();
    shown.textContent = "showing " + matches.length + " of " + rows.length + " images";
  }

  document.querySelectorAll("button.filter").forEach(function (button) {
    button.addEventListener("click", function () {
      verdict = button.dataset.verdict;
      document.querySelectorAll("button.filter").forEach(function (other) {
        other.setAttribute("aria-pressed", String(other === button));
      });
      apply();
    });
  });
  search.addEventListener("input", apply);

  grid.addEventListener("click", function (event) {
    var figure = event.target.closest(".card");
    if (!figure) return;
    var row = matches[Number(figure.dataset.position)];
    var source = row[6] || row[5];
    var image = document.getElementById("viewer-image");
    document.getElementById("viewer-caption").textContent =
      row[0] + " · score " + row[1].toPrecision(6) + (row[2] ? " · " + row[2] : "") +
      (row[7] !== null ? " · " + (row[7] >= 0 ? "+" : "") + row[7].toPrecision(4) + " from threshold" : "");
    if (source) {
      image.src = source;
      image.alt = row[0];
      image.hidden = false;
    } else {
      image.hidden = true;
    }
    viewer.showModal();
  });

  new IntersectionObserver(function (entries) {
    if (entries.some(function (entry) { return entry.isIntersecting; }) && rendered < matches.length) renderMore();
  }, { rootMargin: "1200px" }).observe(document.getElementById("more"));

  apply();
  window.fastadReport = { rows: rows.length, firstRenderMs: performance.now() };
})();
