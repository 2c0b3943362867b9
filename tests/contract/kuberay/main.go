// Command kuberay-pods prints the Pods and the head Service that the KubeRay operator builds for a RayCluster,
// by calling the operator's own pod builders (ray-operator/controllers/ray/common at the pinned release), so the
// contract tests run the Ray containers with exactly the command, args, env and probes a real cluster gets.
//
// Usage: kuberay-pods < raycluster.json > pods.json    (or a RayService: its rayClusterConfig, and its serve Service)
// Output: {"head": Pod, "workers": {"GROUP": Pod}, "headService": Service, "serveService": Service (RayService only)}
package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"

	corev1 "k8s.io/api/core/v1"

	rayv1 "github.com/ray-project/kuberay/ray-operator/apis/ray/v1"
	"github.com/ray-project/kuberay/ray-operator/controllers/ray/common"
	"github.com/ray-project/kuberay/ray-operator/controllers/ray/utils"
)

type output struct {
	Head        *corev1.Pod            `json:"head"`
	Workers     map[string]*corev1.Pod `json:"workers"`
	HeadService *corev1.Service        `json:"headService"`
	// What the RayService controller makes once its cluster is ready (reconcileServicesToReadyCluster).
	ServeService *corev1.Service `json:"serveService,omitempty"`
}

func main() {
	raw, err := io.ReadAll(os.Stdin)
	if err != nil {
		fail(err)
	}
	var kind struct{ Kind string }
	if err := json.Unmarshal(raw, &kind); err != nil {
		fail(fmt.Errorf("not JSON: %w", err))
	}
	var cluster rayv1.RayCluster
	var service *rayv1.RayService
	if kind.Kind == "RayService" {
		service = &rayv1.RayService{}
		if err := json.Unmarshal(raw, service); err != nil {
			fail(fmt.Errorf("not a RayService: %w", err))
		}
		// The controller names its cluster NAME-RANDOM (utils.GenerateRayClusterName); the builders take the name.
		cluster = rayv1.RayCluster{Spec: *service.Spec.RayClusterSpec.DeepCopy()}
		cluster.Name, cluster.Namespace = service.Name+"-abcde", service.Namespace
	} else if err := json.Unmarshal(raw, &cluster); err != nil {
		fail(fmt.Errorf("not a RayCluster: %w", err))
	}
	ctx := context.Background()
	autoscaling := utils.IsAutoscalingEnabled(&cluster.Spec)
	fqdn := utils.GenerateFQDNServiceName(ctx, cluster, cluster.Namespace)
	headPort := common.GetHeadPort(cluster.Spec.HeadGroupSpec.RayStartParams)

	// As the controller's buildHeadPod and buildWorkerPod do (raycluster_controller.go).
	headName := utils.PodName(cluster.Name, rayv1.HeadNode, true)
	headTemplate := common.DefaultHeadPodTemplate(ctx, cluster, cluster.Spec.HeadGroupSpec, headName, headPort)
	head := common.BuildPod(ctx, headTemplate, rayv1.HeadNode, cluster.Spec.HeadGroupSpec.RayStartParams, headPort,
		autoscaling, utils.RayClusterCRD, fqdn, nil, cluster.Spec.RayVersion)
	out := output{Head: &head, Workers: map[string]*corev1.Pod{}}
	for _, group := range cluster.Spec.WorkerGroupSpecs {
		name := utils.PodName(fmt.Sprintf("%s-%s", cluster.Name, group.GroupName), rayv1.WorkerNode, true)
		template := common.DefaultWorkerPodTemplate(ctx, cluster, group, name, fqdn, headPort, "", 0, 0)
		pod := common.BuildPod(ctx, template, rayv1.WorkerNode, group.RayStartParams, headPort, autoscaling,
			utils.RayClusterCRD, fqdn, nil, cluster.Spec.RayVersion)
		out.Workers[group.GroupName] = &pod
	}
	headService, err := common.BuildServiceForHeadPod(ctx, cluster, map[string]string{}, map[string]string{})
	if err != nil {
		fail(err)
	}
	out.HeadService = headService
	if service != nil {
		serve, err := common.BuildServeServiceForRayService(ctx, *service, cluster)
		if err != nil {
			fail(err)
		}
		out.ServeService = serve
	}
	if err := json.NewEncoder(os.Stdout).Encode(out); err != nil {
		fail(err)
	}
}

func fail(err error) {
	fmt.Fprintln(os.Stderr, "kuberay-pods:", err)
	os.Exit(2)
}
