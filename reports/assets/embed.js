(function () {
  var specs = JSON.parse(document.getElementById("mmlo-specs").textContent);
  var ids = Object.keys(specs);
  var options = {renderer: "svg", actions: {export: true, source: false, compiled: false, editor: false}};
  Promise.all(ids.map(function (id) {
    return vegaEmbed("#" + id, specs[id], options).catch(function (err) {
      var el = document.getElementById(id);
      el.className += " chart-error";
      el.textContent = "This chart could not be drawn: " + err;
      window.mmloError("chart " + id + ": " + err);
    });
  })).then(function () { document.documentElement.setAttribute("data-charts-done", String(ids.length)); });
})();
