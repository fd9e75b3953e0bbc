// Validates Istio and Prometheus Operator objects against their published schemas (npm
// @kubernetes-models/istio and /prometheus-operator, generated from the projects' CRDs:
// field types, enums, required fields). Reads a JSON array of {where, doc} on stdin, prints
// one line per problem, exits 1 if any. Called by tools/validate_schemas.py, which checks the
// core Kubernetes kinds itself.
import * as istioExtensions from "@kubernetes-models/istio/extensions.istio.io/v1alpha1";
import * as istioNetworkingV1 from "@kubernetes-models/istio/networking.istio.io/v1";
import * as istioNetworkingV1alpha3 from "@kubernetes-models/istio/networking.istio.io/v1alpha3";
import * as monitoringV1 from "@kubernetes-models/prometheus-operator/monitoring.coreos.com/v1";

const models = {
  "extensions.istio.io/v1alpha1": istioExtensions,
  "networking.istio.io/v1": istioNetworkingV1,
  "networking.istio.io/v1alpha3": istioNetworkingV1alpha3,
  "monitoring.coreos.com/v1": monitoringV1,
};

let input = "";
for await (const chunk of process.stdin) input += chunk;
const problems = [];
for (const { where, doc } of JSON.parse(input)) {
  const Model = (models[doc.apiVersion] || {})[doc.kind];
  if (!Model) {
    problems.push(`${where}: no schema for ${doc.apiVersion} ${doc.kind}`);
    continue;
  }
  try {
    new Model(doc).validate();
    console.log(`[schemas] ${where}: ${doc.apiVersion} ${doc.kind} ${doc.metadata?.name} ok`);
  } catch (e) {
    problems.push(`${where}: ${doc.apiVersion} ${doc.kind} ${doc.metadata?.name}: ${e.message}`);
  }
}
for (const p of problems) console.error(`[schemas] ${p}`);
process.exit(problems.length ? 1 : 0);
