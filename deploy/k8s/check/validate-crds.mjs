// Validates custom resources (KEDA, Prometheus operator) against the schemas their
// projects publish, as packaged by kubernetes-models. Reads a JSON array of objects on
// stdin; prints a JSON array of {kind, name, error} (error null when valid).
import { ScaledObject } from "@kubernetes-models/keda/keda.sh/v1alpha1/ScaledObject";
import { TriggerAuthentication } from "@kubernetes-models/keda/keda.sh/v1alpha1/TriggerAuthentication";
import { ServiceMonitor } from "@kubernetes-models/prometheus-operator/monitoring.coreos.com/v1/ServiceMonitor";
import { PrometheusRule } from "@kubernetes-models/prometheus-operator/monitoring.coreos.com/v1/PrometheusRule";

const models = {
  "keda.sh/v1alpha1/ScaledObject": ScaledObject,
  "keda.sh/v1alpha1/TriggerAuthentication": TriggerAuthentication,
  "monitoring.coreos.com/v1/ServiceMonitor": ServiceMonitor,
  "monitoring.coreos.com/v1/PrometheusRule": PrometheusRule,
};

let input = "";
for await (const chunk of process.stdin) input += chunk;
const results = JSON.parse(input).map((object) => {
  const key = `${object.apiVersion}/${object.kind}`;
  const Model = models[key];
  const name = object.metadata?.name;
  if (!Model) return { kind: key, name, error: "no schema known for this kind" };
  try {
    new Model(object).validate();
    return { kind: key, name, error: null };
  } catch (error) {
    return { kind: key, name, error: String(error.message ?? error) };
  }
});
process.stdout.write(JSON.stringify(results));
